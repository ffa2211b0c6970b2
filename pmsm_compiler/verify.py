"""Verification: the SNN at T = 1 against the quantized ANN, in the same engine and level.

Both models run in onnxruntime at the same graph-optimization level on the same inputs, the SNN
through the runtime, as it runs the first and only step of T = 1 (``SNNSession.run_first_step``:
static prologue, initial states as constants, temporal wrappers bypassed, no reset, fused neuron
kernels where they build). Per neuron
layer the quantization levels are compared exactly (ANN: k = rint(y / s_out); SNN: the emitted
spike counts k); for the network outputs the max |difference| and the top-1 agreement are reported
(a sample whose two top-1 classes the ANN's own logits separate by no more than ``output_rtol`` ·
max |logit| is a tie and counts as agreeing: ``top1_ties``).

Exposing a quantizer's output (in the ANN) or a layer's spikes (in the SNN) stops onnxruntime's
rewrites that cross it, so that comparison is between two models nobody runs as such. The
outputs are therefore also compared as they are run (``plain_ann``, exact mode): the plain ANN,
nothing exposed, against the SNN's T = 1 run (its step in the ANN's form,
``runtime.ann_form_step``), and required identical too.

Policy (documented in docs/report-schema.md):
- ``exact`` mode claims bit-identity: passed only if every AIF layer agrees on every level and the
  outputs are identical (max_abs_diff == 0);
- ``folded`` mode re-associates float sums (θ folded into weights), so rare level flips are
  expected; a flip early in the network moves the inputs of later layers, so the per-layer rates
  grow with depth (they are all reported). Passed if the mismatch rate over all AIF levels is
  ≤ ``max_level_mismatch`` (default 1e-2) and the top-1 agreement ≥ ``min_top1_agreement``
  (default 0.98).
- both modes, **the outputs given the same levels** ("teacher-forced tail"): a level flip moves
  the outputs by a whole level's worth, so the ANN's outputs cannot bound the folded SNN's. The
  ANN's tail is therefore run on the SNN's own levels: every quantizer output is cut out of the
  ANN and fed the value the SNN's neuron emits (the source's output op applied to its spike
  count k). What remains between the two models is the arithmetic after the neurons, which
  folding may only re-associate: passed if max |SNN − tail| ≤ ``output_rtol`` · max |tail|
  (default 1e-4) over all outputs and samples. This is what catches a folding that is wrong
  where no neuron follows (e.g. a constant minus spike traffic feeding the output), which the
  level and top-1 checks cannot see.
QCFS layers (binary IF neurons) are lossy at T = 1 by design (Bu et al. 2022): they are reported
but excluded from the level policy, and so are the ANN-vs-SNN outputs of a model that contains
them; the teacher-forced tail still applies (it uses the SNN's own spikes).

The ANN's Q/DQ nodes are checked against their ONNX (float simulation) semantics: onnxruntime's
QDQ fusion into integer kernels (``session.disable_quant_qdq``) is switched off in the reference
session at every optimization level, since an integer kernel rounds its accumulations differently
and would make a correct SNN fail from the "extended" level on.

Batches follow the model's declared batch: a model with a fixed batch dimension B is fed batches
of exactly B (the last one padded, its padding discarded); a dynamic batch uses ``batch_size`` or
fewer samples, so that one batch's layer outputs stay within ``BATCH_BYTES``
(``verification_batch``).

The ANN and the SNN run side by side, each on half the cores (``verification_threads``), unless a
number of threads is asked for: onnxruntime's kernels scale poorly on the verification's small
batches (``bench/verify_side_by_side.py``, 2 cores: ViT-S, batch 1, 49.9 → 36.4 ms a sample
pair; VGG-16 8.0 → 7.6; ResNet-20 1.46 → 1.01). The ANN's runs go ahead of the SNN's in a thread
of their own (``_AheadOfTheSNN``), from the moment its session is built, while the SNN's is still
being built (``pmsm-compile`` builds it in a thread from the output file), holding what the
comparison needs of them (``_AnnLevels``: the levels as int8 where they fit) within
``AHEAD_BYTES``; where the results of every sample fit, the SNN's session gets all the cores
(``verification_snn_threads``). Their results do not depend on the threads (the bench compares
them; checked on the shipped and bench models, both modes).
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent import futures
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from pmsm_compiler import weights
from pmsm_compiler.errors import InputError
from pmsm_compiler.limits import MAX_TENSOR_BYTES, format_bytes
from pmsm_compiler.onnx_utils import ancestors, downstream, node_dag, tensor_flow, with_outputs
from pmsm_compiler.runtime import SNNSession
from pmsm_compiler.sessions import declared_batch, make_session, onnxruntime_errors, padded_batches
from pmsm_compiler.snn_format import SNNInfo


#: The most bytes of neuron-layer outputs a batch of a model with a dynamic batch may have. The
#: verification holds about eight copies of them at once (the ANN's levels and the SNN's spikes in
#: onnxruntime's arenas and as arrays, the values fed to the tail, temporaries): at 32 samples,
#: ViT-S's 15 MB per sample peaked at 4.5 GiB; each sample of a batch costs it ~120 MB. Smaller
#: batches cost no measurable time here (ViT-S, ANN and SNN at batch 1 and 4: the same CPU time).
BATCH_BYTES = 16 * 2**20


#: The comparison as run holds only the network outputs, so its batches may be this many times
#: the verification's (at most ``batch_size``): ViT-S runs 4 samples a batch there, not 1.
PLAIN_BATCH_FACTOR = 4


def verification_batch(info: SNNInfo, batch_size: int = 32) -> int:
    """The batch the verification runs: the model's declared batch when it is fixed, else
    ``batch_size`` samples or as many fewer (at least 1) as keep the float32 outputs of all its
    neuron layers within ``BATCH_BYTES`` (ResNet-20: 22, VGG-16: 14, ViT-S: 1)."""
    fixed = declared_batch(info.inputs[0].shape)
    if fixed:
        return fixed
    per_sample = 4 * sum(layer.neurons or 0 for layer in info.layers)
    return max(1, min(batch_size, BATCH_BYTES // per_sample if per_sample else batch_size))


@dataclass
class VerificationPolicy:
    max_level_mismatch: float = 1e-2
    min_top1_agreement: float = 0.98
    output_rtol: float = 1e-4


def check_runs(model: onnx.ModelProto, x: np.ndarray, opt_level: str = "all", what: str = "the model",
               providers=None, threads: int = 0, weights_folder: str | None = None) -> None:
    """InputError (one line) unless onnxruntime runs ``model`` on ``x``. The ONNX checker and
    shape inference accept some models onnxruntime refuses at run time (a Conv kernel_shape that
    contradicts its weight, a pooling window larger than its input)."""
    with onnxruntime_errors(what):
        session = make_session(model, opt_level, providers, threads, weights_folder=weights_folder)
        session.run(None, {session.get_inputs()[0].name: x})


def has_qdq(model: onnx.ModelProto) -> bool:
    """Whether the main graph quantizes with QuantizeLinear/DequantizeLinear (which onnxruntime
    fuses into integer kernels unless told not to)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def reference_session(compiled, opt_level: str = "all", providers=None, threads: int = 0, exposed: bool = True,
                      weights_folder: str | None = None):
    """A verification's ANN session: the reference ANN (``compiled.reference``), Q/DQ as float
    simulation, with every quantizer output also a graph output (``exposed``) or as it is.
    ``weights_folder``: where the files its external-data references name are."""
    model, arrays = weights.split(compiled.reference)  # the copy with_outputs makes holds no weights
    if exposed:
        model = with_outputs(model, [l.ann_output for l in compiled.info.layers])
    return make_session(model, opt_level, providers, threads, qdq_fusion=False, initializers=arrays,
                        weights_folder=weights_folder)


def teacher_forced_tail(ann: onnx.ModelProto, layers) -> onnx.ModelProto:
    """The ANN with every quantizer output (``layer.ann_output``) cut out and made a graph
    input: it computes the network outputs from given activation levels. Nodes that only fed the
    cut tensors are dropped, and so are the cut tensors nothing left reads (the levels it needs
    are the last layers'); the network inputs stay (a path may bypass every quantizer)."""
    g = ann.graph
    cut = {layer.ann_output for layer in layers}
    producer = {out: i for i, n in enumerate(g.node) for out in n.output if out}
    dag = node_dag(g.node, cut=cut)
    keep = {producer[o.name] for o in g.output if o.name in producer and o.name not in cut}
    keep |= {j for i in keep for j in ancestors(dag, i)}
    known = {v.name: v for v in list(g.value_info) + list(g.output)}
    m = onnx.ModelProto()
    m.CopyFrom(ann)
    del m.graph.node[:]
    m.graph.node.extend(n for i, n in enumerate(g.node) if i in keep)
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in g.output}
    kept_init = [t for t in g.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept_init)
    dropped = {t.name for t in g.initializer} - used  # older exporters list initializers as inputs too
    kept_inputs = [i for i in g.input if i.name not in dropped]
    del m.graph.input[:]
    m.graph.input.extend(kept_inputs)
    for layer in layers:
        name = layer.ann_output
        if name not in used:
            continue
        if name in known:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(known[name])
        else:
            vi = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        m.graph.input.append(vi)
    return m


def downstream_of_lossy(ann: onnx.ModelProto, layers) -> set[str]:
    """Names of the AIF layers whose input depends on an IF (QCFS) layer's output: at T = 1 an IF
    layer emits a 1-bit code instead of its ANN level, so the levels after it cannot agree with
    the ANN's and are not held to the level policy (the tail check still covers them)."""
    lossy = {l.ann_output for l in layers if l.neuron == "IF"}
    if not lossy:
        return set()
    reached = downstream(tensor_flow(ann.graph.node), lossy)
    return {l.name for l in layers if l.neuron != "IF" and l.ann_output in reached}


def emitted_values(layer: dict, k: np.ndarray) -> np.ndarray:
    """What the ANN's quantizer output would be if its level were the SNN's spike count k: the
    source's own output op (Mul or Div by its scale; none for a bare level) applied to k, in
    float32 as onnxruntime computes it. An IF neuron's spike stands for θ_out = λ."""
    k = k.astype(np.float32, copy=False)
    if layer.neuron == "IF":
        return k * np.float32(layer.theta_out)
    op, value = layer.ann_post_op, np.float32(layer.ann_post_value)
    if op == "Div":
        return k / value
    if op in ("Mul", "DequantizeLinear"):  # DequantizeLinear: (q − zp)·s = k·s
        return k * value
    return k.copy()


def initial_state_feeds(info: SNNInfo, session) -> dict:
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}
    return {s.input: np.full([1] * ranks[s.input], s.init, np.float32) for s in info.states}


def random_inputs(info: SNNInfo, samples: int, seed: int = 0) -> np.ndarray:
    """Seeded random inputs of the model input's element type: floats standard normal (float64
    draws rounded to the type), integers uniform over the type's whole range, bools fair coins.

    Refused before allocating, in one line: an input without a static per-sample shape, an
    element type without a numpy type, and an array over ``limits.MAX_TENSOR_BYTES``.
    """
    spec = info.inputs[0]
    shape = spec.shape
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        raise InputError("the model input has no static per-sample shape; give --calibration-data")
    dtype = spec.numpy_dtype()
    dims = tuple(shape[1:])
    nbytes = samples * int(np.prod(dims, dtype=object)) * dtype.itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise InputError(f"random verification inputs for input '{spec['name']}' of shape {shape} ({dtype}): "
                         f"{samples:,} samples need {format_bytes(nbytes)}, over the limit of "
                         f"{format_bytes(MAX_TENSOR_BYTES)}; use fewer samples or calibration data")
    rng = np.random.default_rng(seed)
    out = np.empty((samples, *dims), dtype)
    if dtype.kind == "f":
        for i in range(samples):  # one sample at a time: the same stream as one call, without a float64 copy
            out[i] = rng.standard_normal(dims)
    elif dtype.kind == "b":
        out[...] = rng.integers(0, 2, size=out.shape, dtype=np.uint8).astype(bool)
    else:
        limits = np.iinfo(dtype)
        out[...] = rng.integers(limits.min, limits.max, size=out.shape, dtype=dtype, endpoint=True)
    return out


ONNX_REFERENCE_SAMPLES = 2


def _cross_check_onnx_reference(ann, ann_sess, x, input_name, output, fixed_batch) -> dict:
    """The reference ANN in ``onnx.reference`` (the ONNX specification's own evaluator, numpy)
    against onnxruntime's float simulation of it, on a few samples: that the engine the
    verification trusts computes the model's ONNX semantics. Information only: the two engines
    may round differently (a different summation order), which can move a level."""
    import onnx.version_converter
    from onnx.reference import ReferenceEvaluator

    xs = x[:ONNX_REFERENCE_SAMPLES]
    xb, n = next(padded_batches(xs, fixed_batch)) if fixed_batch else (xs, len(xs))
    ort_out = dict(zip([o.name for o in ann_sess.get_outputs()], ann_sess.run(None, {input_name: xb})))[output][:n]
    record = {"what": "onnx.reference on the reference ANN vs onnxruntime's float simulation (information only)",
              "samples": int(n)}
    with np.errstate(all="ignore"):  # numpy's overflow warnings (an Exp, a Celu of a large input): information only
        try:
            try:
                ref_out = ReferenceEvaluator(ann).run([output], {input_name: xb})[0]
            except RuntimeError as exc:  # onnx.reference has Q/DQ from opset 19 on: convert, same semantics
                if "No implementation" not in str(exc):
                    raise
                ref_out = ReferenceEvaluator(onnx.version_converter.convert_version(ann, 19)).run(
                    [output], {input_name: xb})[0]
                record["converted_to_opset"] = 19
            ref_out = np.asarray(ref_out)[:n]
        except Exception as exc:  # noqa: BLE001 - what onnx.reference cannot run: say so, it is information
            record["unavailable"] = " ".join(str(exc).split())[:200]
            return record
    diff = np.abs(ref_out.astype(np.float64) - ort_out)
    record["max_abs_diff"] = float(diff.max()) if diff.size else 0.0
    if ort_out.ndim == 2:
        record["top1_agreement"] = float((ref_out.argmax(1) == ort_out.argmax(1)).mean())
    return record


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def verification_threads(threads: int = 0, providers=None) -> tuple[int, bool]:
    """(intra-op threads of each verification session, whether the ANN and the SNN run side by
    side) for a verification asked to run on ``threads`` (0: onnxruntime's default): on the CPU by
    default each gets half the cores and the two run at once; asked threads (or one core, or
    another provider) run one after the other with them."""
    if threads or (providers and providers[0] != "CPUExecutionProvider"):
        return threads, False
    cores = _cores()
    return (cores // 2, True) if cores >= 2 else (threads, False)


def ann_results_bytes(info: SNNInfo, samples: int) -> int:
    """The most that ``samples`` samples of the ANN's results (``_AnnLevels``) hold, network outputs
    aside: a byte a level of an AIF layer whose levels fit int8, four bytes a value otherwise."""
    per_sample = sum((layer.neurons or 0) * (1 if layer.neuron == "AIF" and layer.s_min is not None
                                             and -128 <= layer.s_min and (layer.s_max or 0) <= 127 else 4)
                     for layer in info.layers)
    return per_sample * samples


def verification_snn_threads(info: SNNInfo, samples: int, threads: int = 0, providers=None) -> int:
    """The intra-op threads of the verification's SNN session (``verification_threads``' share of
    the cores), or all the cores where the ANN and the SNN run side by side and the ANN's results of
    all ``samples`` samples fit ``AHEAD_BYTES``: the ANN's runs then go ahead of the SNN's, mostly
    while the SNN's session is built, and the SNN's have the cores to themselves once they are done
    (VGG-16, 2 cores: its whole ``pmsm-compile`` 2.03 s with the SNN on its half, 1.84 s on all of
    them; ViT-S, whose results do not fit, would take 4.55 s instead of 4.19 s on all of them:
    ``docs/benchmarks.md``, "The ANN's runs ahead of the SNN's")."""
    each, side_by_side = verification_threads(threads, providers)
    if side_by_side and ann_results_bytes(info, samples) <= AHEAD_BYTES:
        return _cores()
    return each


#: The most bytes of the ANN's results (``_AnnLevels``) the verification holds ahead of the SNN's:
#: the ANN's runs start once its session is built, while the SNN's is still being built, and go on
#: as far as this allows (at least one batch).
AHEAD_BYTES = 32 * 2**20


@dataclass
class _AnnLevels:
    """One batch of the ANN as the comparison needs it: per neuron layer, the levels k = rint(y / s)
    (AIF; int8 where they all fit, else float32) or the output y itself (IF), and the network
    outputs, each of the ``n`` real samples."""
    levels: list
    outputs: dict

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.levels) + sum(v.nbytes for v in self.outputs.values())


def _ann_levels(values: dict, layers, outputs, n: int) -> _AnnLevels:
    """``_AnnLevels`` of the ANN's outputs ``values`` ({name: array}) for the first ``n`` samples."""
    levels = []
    for layer in layers:
        y = values[layer.ann_output][:n]
        if layer.neuron != "AIF":
            levels.append(y.copy())
            continue
        k = np.divide(y, np.float32(layer.ann_post_scale))
        np.rint(k, out=k)
        # int8 holds every level of a quantizer of up to 8 bits exactly; a NaN fails both bounds
        if k.size and -128.0 <= k.min() and k.max() <= 127.0:
            k = k.astype(np.int8)
        levels.append(k)
    return _AnnLevels(levels, {name: values[name][:n].copy() for name in outputs})


class _AheadOfTheSNN:
    """The ANN's batches (``compute(xb, n)`` of each of ``batches``), in order: computed in a thread
    of its own (``concurrent``; onnxruntime runs without the GIL) as far ahead of the caller's
    ``next()`` as ``budget`` bytes of results allow (at least one batch), or each when asked for.
    A failure is raised by ``next()``; leaving the block stops the thread after its current batch
    and waits for it."""

    def __init__(self, compute, batches, budget: int, concurrent: bool):
        self._compute, self._batches, self._budget = compute, iter(batches), budget
        self._cond = threading.Condition()
        self._ready: collections.deque = collections.deque()
        self._held = self._last = 0
        self._stop = self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name="pmsm-verify-ann", daemon=True) \
            if concurrent else None

    def __enter__(self):
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()

    def _produce(self) -> None:
        try:
            for xb, n in self._batches:
                with self._cond:
                    while self._held and self._held + self._last > self._budget and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                result = self._compute(xb, n)
                with self._cond:
                    self._ready.append(result)
                    self._held += result.nbytes
                    self._last = result.nbytes
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread by next()
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def next(self) -> _AnnLevels:
        if self._thread is None:
            xb, n = next(self._batches)
            return self._compute(xb, n)
        with self._cond:
            while not self._ready and not self._done:
                self._cond.wait()
            if not self._ready:  # the batches before the failure were handed over first
                raise self._error or RuntimeError("the ANN's batches ended before the SNN's")
            result = self._ready.popleft()
            self._held -= result.nbytes
            self._cond.notify_all()
            return result


def _compare_as_run(plain_sess, snn, x, input_name, outputs, batch, concurrent=False) -> dict:
    """{max_abs_diff, top1_agreement} of the plain ANN's outputs and the SNN's T = 1 run's;
    ``snn()``: the SNN's runtime (built, or waited for, while the ANN's first batches run)."""
    def ann_outputs(xb, n):
        return _AnnLevels([], {name: v[:n] for name, v in zip(outputs, plain_sess.run(outputs, {input_name: xb}))})

    diff, same, compared = 0.0, 0, 0
    with _AheadOfTheSNN(ann_outputs, padded_batches(x, batch), AHEAD_BYTES, concurrent) as ahead:
        runtime = snn()
        for xb, n in padded_batches(x, batch):
            s = runtime.run_first_step(xb)
            ann = ahead.next().outputs
            for name in outputs:
                if ann[name].size:
                    diff = max(diff, float(np.abs(ann[name].astype(np.float64) - s[name][:n]).max()))
            if ann[outputs[0]].ndim == 2:
                same += int((ann[outputs[0]].argmax(1) == s[outputs[0]][:n].argmax(1)).sum())
                compared += n
    return {"max_abs_diff": diff, "top1_agreement": same / compared if compared else None}


def snn_runtime(compiled, opt_level: str = "all", providers=None, threads: int = 0, weights_folder: str | None = None,
                warm: bool = False) -> SNNSession:
    """The SNN as the verification runs it: as the runtime runs the one step of T = 1 (static
    prologue, fused kernels, ...), with ``threads`` (``verification_threads``' share), its weights
    read when a session is built (``keep_weights=False``: the SNN's ModelProto lives on beside it
    for the save, or is a structure whose weights are in files under ``weights_folder``; a T = 1
    run builds one step session, so the arrays it reads for it are not held as a third copy).
    ``warm``: with the session of the verification's first use of it built (exact mode: the step
    in the ANN's form of the comparison as run; folded: the step with every layer's spikes)."""
    runtime = SNNSession(compiled.model, opt_level=opt_level, providers=providers, threads=threads,
                         keep_weights=False, weights_folder=weights_folder)
    if warm:
        exact = (compiled.info.mode == "exact")
        runtime.session_for(True, True, () if exact else tuple(l.spike_tensor for l in compiled.info.layers))
    return runtime


def verify(ann: onnx.ModelProto, compiled, x: np.ndarray, opt_level: str = "all", mode: str | None = None,
           policy: VerificationPolicy | None = None, batch_size: int = 32, data_label: str = "random",
           providers=None, threads: int = 0, ann_session=None, plain_session=None, release_ann=None,
           ann_weights_folder: str | None = None, runtime=None) -> dict:
    """The T = 1 verification report (see the module docstring). ``ann_session``,
    ``plain_session``: the ``reference_session``s, exposed and plain, when the caller built one
    already (``pipeline`` does, to run its check on it instead of building a session of the ANN
    for that alone; the plain one is freed once used, when the caller keeps no reference; built
    with ``verification_threads``). ``threads``: as asked (0: the default, side by side).

    ``release_ann``: called once every session of the ANN is built (exact mode: after the
    comparison as run), before the SNN's session of the level comparison, for an ``ann`` without
    Q/DQ nodes; it returns what stands for ``ann`` and ``compiled.reference`` from then on (their
    structures), and the caller drops its own references in it, so that their weights are freed
    before that session's build, the verification's peak (``pipeline``'s ``keep_weights=False``).

    ``ann_weights_folder``: where the files that the external-data references of
    ``compiled.reference`` name are (the pipeline's ANN read from its model file:
    ``weights.WeightFiles``).

    ``runtime``: the SNN's ``snn_runtime``, when the caller builds it (the pipeline builds it from
    the SNN as written to the output, with the session of its first use, in a thread while it
    builds the ANN's, and passes that thread's future: the ANN's runs start before it is done; a
    future whose result is None: built here); default: built here from ``compiled.model``, on
    ``verification_snn_threads``, while the ANN's first batches run."""
    info = compiled.info
    mode = mode or info.mode
    snn_threads = verification_snn_threads(info, len(x), threads, providers)
    threads, side_by_side = verification_threads(threads, providers)
    policy = policy or VerificationPolicy()
    layers = info.layers
    outputs = info.outputs
    input_name = info.inputs[0].name
    given = ann
    ann = getattr(compiled, "reference", None) or given  # constants evaluated as in the SNN
    evaluated = ann is not given
    # What a deployment of the quantized ANN computes (onnxruntime's default: Q/DQ fused into
    # integer kernels), compared for information only.
    quantized = has_qdq(given)
    pending = runtime if isinstance(runtime, futures.Future) else None

    def built_runtime():  # the caller's, once built (None: its writer failed), or one built here
        nonlocal runtime, pending
        if pending is not None:
            runtime, pending = pending.result(), None
        if runtime is None:
            runtime = snn_runtime(compiled, opt_level, providers, snn_threads)
        return runtime

    plain = None
    if mode == "exact":
        # The outputs as run, first: the ANN as onnxruntime runs it, nothing exposed (exposing a
        # quantizer's output stops the rewrites that cross it, so the comparison below runs an ANN
        # nobody deploys), against the SNN's T = 1 run (its step in the ANN's form). Only network
        # outputs are held, so its batches are larger (``PLAIN_BATCH_FACTOR``). Its sessions are freed before
        # the others are built: the caller hands ``plain_session`` over (pipeline keeps no reference).
        if plain_session is None:
            # not built beside the SNN's session: both copy the weights (the legacy VGG-16's
            # reference, in memory), the two builds' copies at once were its peak (842 -> 967 MiB
            # for 0.35 s, against 823 -> 843 MiB for 0.12 s waiting)
            built_runtime()
        plain_sess = plain_session or make_session(ann, opt_level, providers, threads, qdq_fusion=False,
                                                   weights_folder=ann_weights_folder)
        plain_session = None
        as_run = _compare_as_run(plain_sess, built_runtime, x, input_name, info.outputs,
                                 declared_batch(info.inputs[0].shape)
                                 or min(batch_size, PLAIN_BATCH_FACTOR * verification_batch(info, batch_size)),
                                 side_by_side)
        runtime = built_runtime()  # built by the comparison, while the ANN's first batches ran
        plain = {"what": "the SNN's T = 1 run against the ANN as onnxruntime runs it, no quantizer output exposed",
                 **as_run, "ann_form": runtime.ann_form}
        if runtime.ann_form_note:
            plain["ann_form_note"] = runtime.ann_form_note
        del plain_sess
        runtime.drop_sessions()
    deployed_sess, deployed_unavailable = None, None
    if quantized:
        try:
            with onnxruntime_errors("the input model with Q/DQ fused"):
                deployed_sess = make_session(given, opt_level, providers, threads)
        except InputError as exc:  # information only: onnxruntime's own QDQ rewrite failing says nothing of the SNN
            deployed_unavailable = str(exc)
    # both from one weight-free skeleton of the ANN and one set of its weights' arrays, freed once
    # onnxruntime has its copies
    skeleton, arrays = weights.split(ann, lazy=ann_session is not None)  # the tail alone: a few arrays
    ann_sess = ann_session or make_session(with_outputs(skeleton, [l.ann_output for l in layers]), opt_level,
                                           providers, threads, qdq_fusion=False, initializers=arrays,
                                           weights_folder=ann_weights_folder)
    tail_sess = make_session(teacher_forced_tail(skeleton, layers), opt_level, providers, threads, qdq_fusion=False,
                             initializers=arrays, weights_folder=ann_weights_folder)
    del skeleton, arrays
    if release_ann is not None:  # no session reads the ANN's weights after this (its graph: below)
        given, ann = release_ann()

    spikes = [l.spike_tensor for l in layers]
    ann_names = [o.name for o in ann_sess.get_outputs()]
    tail_inputs = {i.name for i in tail_sess.get_inputs()}
    agree = np.zeros(len(layers), np.int64)
    total = np.zeros(len(layers), np.int64)
    max_abs = 0.0  # SNN vs ANN
    tail_err = 0.0  # SNN vs the ANN's tail fed the SNN's levels
    tail_scale = 0.0
    top1_same = 0
    top1_compared = 0  # top-1 applies only to a [batch, classes] first output
    top1_gaps, top1_scale = [], 0.0  # the ANN's margin between the two top-1 classes where they differ
    deployed_same, deployed_diff = 0, 0.0
    batch = verification_batch(info, batch_size)

    def ann_levels(xb, n):
        return _ann_levels(dict(zip(ann_names, ann_sess.run(None, {input_name: xb}))), layers, outputs, n)

    with _AheadOfTheSNN(ann_levels, padded_batches(x, batch), AHEAD_BYTES, side_by_side) as ahead:
        runtime = built_runtime()  # the ANN's first batches run while the SNN's session is built
        for xb, n in padded_batches(x, batch):
            s = runtime.run_first_step(xb, spikes)
            a = ahead.next()
            tail_feeds = {l.ann_output: emitted_values(l, s[l.spike_tensor]) for l in layers if l.ann_output in tail_inputs}
            if input_name in tail_inputs:
                tail_feeds[input_name] = xb
            r = dict(zip(outputs, tail_sess.run(outputs, tail_feeds)))
            del tail_feeds
            for j, layer in enumerate(layers):
                k = s[layer.spike_tensor][:n]
                if layer.neuron == "AIF":
                    same = a.levels[j] == k
                else:  # IF: compare the real outputs, informational only
                    same = np.abs(a.levels[j] - k * np.float32(layer.theta_out)) <= 1e-6 * max(1.0, layer.theta_out)
                agree[j] += np.count_nonzero(same)
                total[j] += same.size
            for name in outputs:
                ann_out, snn_out, ref = (v[:n].astype(np.float64) for v in (a.outputs[name], s[name], r[name]))
                if snn_out.size:
                    max_abs = max(max_abs, float(np.abs(ann_out - snn_out).max()))
                    tail_err = max(tail_err, float(np.abs(ref - snn_out).max()))
                    tail_scale = max(tail_scale, float(np.abs(ref).max()))
            first = outputs[0]
            if a.outputs[first].ndim == 2:
                logits = a.outputs[first][:n].astype(np.float64)
                ann_top, snn_top = logits.argmax(1), s[first][:n].argmax(1)
                rows = np.flatnonzero(ann_top != snn_top)
                top1_same += n - rows.size
                top1_compared += n
                top1_gaps.extend(logits[rows, ann_top[rows]] - logits[rows, snn_top[rows]])
                if logits.size:
                    top1_scale = max(top1_scale, float(np.abs(logits).max()))
            if deployed_sess is not None:
                d = dict(zip([o.name for o in deployed_sess.get_outputs()], deployed_sess.run(None, {input_name: xb})))
                deployed_diff = max(deployed_diff, float(np.abs(d[first][:n].astype(np.float64) - s[first][:n]).max()))
                if d[first].ndim == 2:
                    deployed_same += int((d[first][:n].argmax(1) == s[first][:n].argmax(1)).sum())
            del s, a, r  # before the next batch's arrays are made
    onnx_reference = _cross_check_onnx_reference(ann, ann_sess, x, input_name, outputs[0],
                                                 declared_batch(info.inputs[0].shape)) \
        if quantized else None
    deployed_built = deployed_sess is not None
    per_layer = []
    for j, layer in enumerate(layers):
        rate = float(agree[j] / total[j]) if total[j] else 1.0
        per_layer.append({"name": layer.name, "neuron": layer.neuron, "level_agreement": rate,
                          "mismatches": int(total[j] - agree[j]), "compared": int(total[j]),
                          "in_policy": layer.neuron == "AIF"})
    # a tie: the ANN's own logits for the two classes within the outputs' tolerance (the folded
    # SNN may re-associate them: a logit that is 0 in exact arithmetic, 1e-9 in the ANN, 0 in the SNN)
    top1_ties = sum(1 for gap in top1_gaps if gap <= policy.output_rtol * top1_scale)
    top1 = (top1_same + top1_ties) / top1_compared if top1_compared else None
    has_if = any(l.neuron == "IF" for l in layers)
    after_lossy = downstream_of_lossy(ann, layers)
    for p in per_layer:
        if p["name"] in after_lossy:
            p["in_policy"] = False
            p["after_lossy_layer"] = True
    lossless = [p for p in per_layer if p["in_policy"]]
    compared = sum(p["compared"] for p in lossless)
    mismatch_rate = sum(p["mismatches"] for p in lossless) / max(1, compared) if lossless else None
    overall = (compared - sum(p["mismatches"] for p in lossless)) / max(1, compared) if lossless else None
    failures = []
    bound = policy.output_rtol * tail_scale
    if not tail_err <= bound:  # written so that a NaN fails
        failures.append(f"outputs differ from the ANN's computed on the SNN's own levels: max |diff| = "
                        f"{tail_err:.3g} > {policy.output_rtol:g} x {tail_scale:.3g} (a wrong rewrite after the "
                        f"last neurons)")
    if mode == "exact":
        for p in lossless:
            if p["mismatches"]:
                failures.append(f"layer {p['name']}: {p['mismatches']} level mismatch(es)")
        if not has_if and max_abs != 0.0:
            failures.append(f"outputs differ (max |diff| = {max_abs:.3g})")
        if not has_if and plain["max_abs_diff"] != 0.0:
            why = runtime.ann_form_note
            failures.append(f"the T = 1 run's outputs differ from the plain ANN's (max |diff| = "
                            f"{plain['max_abs_diff']:.3g})" + (f": its step is not in the ANN's form ({why})" if why else ""))
    else:
        # the rate itself, not 1 − agreement: 1 − 396/400 rounds to just above 0.01
        if mismatch_rate is not None and mismatch_rate > policy.max_level_mismatch:
            failures.append(f"level mismatch rate {mismatch_rate:.2e} > {policy.max_level_mismatch:g}")
        if not has_if and top1 is not None and top1 < policy.min_top1_agreement:
            failures.append(f"top-1 agreement {top1:.4f} < {policy.min_top1_agreement:g}"
                            + (f" ({top1_ties} tie(s) counted as agreeing)" if top1_ties else ""))
    policy_record = (asdict(policy) if mode == "folded" else {"exact": True, "output_rtol": policy.output_rtol})
    return {
        "passed": not failures, "skipped": False, "failures": failures, "mode": mode, "opt_level": opt_level,
        "samples": int(len(x)), "batch": int(batch), "data": data_label, "policy": policy_record,
        "level_agreement": overall, "top1_agreement": top1, "top1_ties": top1_ties if top1_compared else None,
        "max_abs_diff": max_abs,
        "tail_max_abs_diff": tail_err, "tail_bound": bound,
        "plain_ann": plain,
        "reference": ("the input model with its computed constants evaluated" if evaluated
                      else "the input model"),
        "onnx_reference": onnx_reference,
        "deployed_ann": None if not quantized else {
            "what": "the input model in onnxruntime with Q/DQ fused into integer kernels (information only)",
            "top1_agreement": deployed_same / top1_compared if top1_compared and deployed_built else None,
            "max_abs_diff": deployed_diff if deployed_built else None,
            **({"unavailable": deployed_unavailable} if deployed_unavailable else {})},
        "lossy_layers_excluded": has_if, "layers": per_layer,
    }
