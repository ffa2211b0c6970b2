"""Spike counting rules: ``pmsm::SpikeCounters``, the per-layer, per-sample counters of one step.

A neuron layer emits k(t) per neuron and step: a signed multi-spike count in [s_min, s_max]
(AIF), or a binary spike (IF, s_min = 0, s_max = 1). What one step of the layer costs depends on
what the hardware transmits, so the layer's spikes are counted by several rules, per sample
(sums over the layer's neurons n):

    spikes         Σ_n |k|           every unit of a multi-spike counted once (the paper's Eq. 11 unit;
                                     the same number as ``pmsm_spike_counts``)
    events         Σ_n 1[k ≠ 0]      one packet per firing neuron and step, carrying polarity and
                                     count (the paper's SpiNNaker-style packet)
    positive       Σ_n max(k, 0)     spikes of positive polarity        (positive + negative = spikes)
    negative       Σ_n max(−k, 0)    spikes of negative polarity
    at_lower_cap   Σ_n 1[k = s_min]  neurons saturated at the lower bound
    at_upper_cap   Σ_n 1[k = s_max]  neurons saturated at the upper bound
    at_zero        Σ_n 1[k = 0]      silent neurons                     (events + at_zero = neurons)

``SpikeCounters <s_min, s_max> (K) => (C)`` maps the spikes K [N, ...] to C, int64 [N, 7], the
columns in the order of ``COUNTERS``. Its body sums in K's own element type and casts the sums
to int64, so it is exact when every partial sum is exactly representable: the caller feeds float32
spikes when neurons · max(|s_min|, |s_max|, 1) < 2^24 (each partial sum is then an integer below
2^24, exact in float32 whatever the summation order), and spikes cast to int64 otherwise
(``passes.count_spikes``). The body computes three of the sums and derives the rest in int64:

    spikes = Σ|k|,  net = Σk:        positive = (spikes + net) / 2,  negative = (spikes − net) / 2
    at_zero = Σ 1[k = 0]:            events = neurons − at_zero

(spikes ± net = 2·positive or 2·negative: even, so the integer division is exact.)
"""

from __future__ import annotations

import numpy as np

from . import parse_function

COUNTERS = ("spikes", "events", "positive", "negative", "at_lower_cap", "at_upper_cap", "at_zero")
#: What each counter models, for reports and documentation.
COUNTER_LABELS = {
    "spikes": "spikes: sum of |k| (every unit of a multi-spike; the paper's Eq. 11 unit)",
    "events": "events: sum of 1[k != 0] (one packet per firing neuron and step, carrying polarity and count)",
    "positive": "positive spikes: sum of max(k, 0)",
    "negative": "negative spikes: sum of max(-k, 0)",
    "at_lower_cap": "neurons at the lower cap: sum of 1[k = s_min]",
    "at_upper_cap": "neurons at the upper cap: sum of 1[k = s_max]",
    "at_zero": "silent neurons: sum of 1[k = 0]",
}

SPIKE_COUNTERS_BODY = """SpikeCounters <s_min, s_max> (K) => (C)
{
    flat = Flatten <axis: int = 1> (K)
    axes = Constant <value_ints: ints = [1]> ()
    magnitude = Abs (flat)
    spikes_sum = ReduceSum <keepdims: int = 1> (magnitude, axes)
    net_sum = ReduceSum <keepdims: int = 1> (flat, axes)
    zero_int = Constant <value_int: int = 0> ()
    lo_int = Constant <value_int: int = @s_min> ()
    hi_int = Constant <value_int: int = @s_max> ()
    zero = CastLike (zero_int, flat)
    lo = CastLike (lo_int, flat)
    hi = CastLike (hi_int, flat)
    is_zero = Equal (flat, zero)
    is_lo = Equal (flat, lo)
    is_hi = Equal (flat, hi)
    zero_ind = CastLike (is_zero, flat)
    lo_ind = CastLike (is_lo, flat)
    hi_ind = CastLike (is_hi, flat)
    zero_sum = ReduceSum <keepdims: int = 1> (zero_ind, axes)
    lo_sum = ReduceSum <keepdims: int = 1> (lo_ind, axes)
    hi_sum = ReduceSum <keepdims: int = 1> (hi_ind, axes)
    spikes = Cast <to: int = 7> (spikes_sum)
    net = Cast <to: int = 7> (net_sum)
    at_zero = Cast <to: int = 7> (zero_sum)
    at_lower_cap = Cast <to: int = 7> (lo_sum)
    at_upper_cap = Cast <to: int = 7> (hi_sum)
    two = Constant <value_int: int = 2> ()
    twice_positive = Add (spikes, net)
    twice_negative = Sub (spikes, net)
    positive = Div (twice_positive, two)
    negative = Div (twice_negative, two)
    neurons = Shape <start: int = 1> (flat)
    events = Sub (neurons, at_zero)
    C = Concat <axis: int = 1> (spikes, events, positive, negative, at_lower_cap, at_upper_cap, at_zero)
}
"""


def spike_counters_function():
    return parse_function(SPIKE_COUNTERS_BODY)


def counter_functions():
    return [spike_counters_function()]


def float_sums_exact(neurons: int | None, s_min: int, s_max: int, limit: int = 2 ** 24) -> bool:
    """Whether float32 sums of this layer's counters are exact: every partial sum of |k| (the
    largest of the counters' sums) is an integer below ``limit`` = 2^24."""
    return neurons is not None and neurons * max(abs(int(s_min)), abs(int(s_max)), 1) < limit


def spike_counters(k: np.ndarray, s_min: int, s_max: int) -> np.ndarray:
    """numpy reference: int64 [N, len(COUNTERS)] from spikes k [N, ...] (integers, any dtype)."""
    k = np.asarray(k)
    if not np.array_equal(k, np.rint(k)):
        raise ValueError("spikes must be integers")
    flat = np.rint(k).astype(np.int64).reshape(len(k), -1)
    columns = {
        "spikes": np.abs(flat).sum(1),
        "events": (flat != 0).sum(1),
        "positive": np.maximum(flat, 0).sum(1),
        "negative": np.maximum(-flat, 0).sum(1),
        "at_lower_cap": (flat == s_min).sum(1),
        "at_upper_cap": (flat == s_max).sum(1),
        "at_zero": (flat == 0).sum(1),
    }
    return np.stack([columns[name].astype(np.int64) for name in COUNTERS], axis=1)
