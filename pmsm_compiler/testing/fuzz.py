"""Differential fuzzer of the compiler: random small quantized networks, checked end to end.

``random_network(seed)`` builds a small ANN directly in ONNX (onnx.helper): a random body of
blocks (Conv, depthwise Conv, Gemm, MatMul, residual Add, Concat, pooling, BatchNormalization
after Conv / Gemm / MatMul / Add with random ε, attention with Softmax and activation×activation
MatMul, LayerNorm, ops mixing constants with spike traffic, shape chains, ...) around quantized
activations in the three forms the compiler recognises (``pmsm::PQA`` / ``pmsm::QCFS`` nodes
with their function bodies; the plain ``Div/Mul → Add ½ → Floor → Clip → Mul`` chain;
``QuantizeLinear → [Clip] → DequantizeLinear``), L from 2 to 16, signed, unsigned (α = 0) and
QCFS, on the network input and as the network output, fixed or dynamic batch. Each quantizer's
λ is calibrated on the network's own fuzz inputs (``fuzz_inputs``), in order, so that its levels
are used (a few are made tiny or huge on purpose); the input scale itself ranges over 10^±3.

``check_network(model)`` compiles the network in both modes and, per onnxruntime optimization
level, checks (see ``check_network`` for the precise claims):
- T = 1 parity against the ANN (exact mode: every level and every output identical; folded
  mode: level-flip rate, and outputs of the samples without a flip within ``FOLDED_OUTPUT_RTOL``);
- T > 1 consistency of ``SNNSession.run_batch`` with the step-by-step reference
  (``pmsm_compiler.testing.reference``): spikes, predictions and outputs identical at every t,
  counters equal to Σ|k|;
- T > 1 semantics: the compiled SNN's spikes and running means against rate coding computed from
  the ANN itself (``reference.run_rate_coded_ann``: neurons in numpy, every other op on the
  running means), which holds the temporal wrappers and the time input to their definition;
- that ``verify.verify`` agrees with these verdicts, and (optionally) the ``pmsm-compile`` CLI's
  exit code and one-line error.
A clean refusal (UnsupportedModelError / InputError) is a result, not a failure.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import traceback
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 20
IR_VERSION = 10
FUZZ_METADATA_KEY = "pmsm.fuzz"
#: The generator's version. A seed builds the same network under the same version; a version
#: that adds constructs changes some seeds' networks, so a recorded failure replays under the
#: version it was found with. 1: the networks up to 2026-12-05; 2: plain activation quantizers
#: also written with Round (``_ROUNDING_STYLES``), drawn from a stream of their own, so that a
#: network without plain quantizers is the one version 1 built;
#: 3: an elementwise activation (Relu, Abs, Tanh, Sigmoid, Erf, HardSwish, Softplus) is, 60 % of
#: the time, one of the CNN activations of ``_ACTIVATIONS`` instead, a Where's comparison 20 % of
#: the time a LessOrEqual and 40 % of the time combined with another mask (And, Or, Xor, Not), drawn
#: (with their attributes) from a stream of their own, so that a network without one is version 2's.
GENERATOR_VERSION = 3
#: version 2's rounding of a plain (non-QCFS) quantizer: Add ½ → Floor (version 1's only one),
#: Round → Clip, Clip → Round, and LSQ's straight-through Round → Sub(·, u) → Add(·, u)
_ROUNDING_STYLES = (("floor", 0.55), ("round", 0.2), ("clip_round", 0.1), ("round_ste", 0.15))
MODES = ("exact", "folded")
#: Folded mode: largest accepted level-flip rate (the verification's default policy).
FOLDED_MAX_FLIP_RATE = 1e-2
#: Folded mode: largest accepted max|ANN − SNN| / max|ANN| over the samples without a level flip.
FOLDED_OUTPUT_RTOL = 1e-3
#: T > 1 against rate coding computed from the ANN (different float rounding, see
#: ``reference.run_rate_coded_ann``): largest accepted level-flip rate over all steps, and relative
#: difference of the running mean outputs on the samples without a flip.
RATE_MAX_FLIP_RATE = 1e-2
RATE_OUTPUT_RTOL = 1e-4
#: A neuron whose levels part from the reference's first where the reference's membrane was within
#: this of a boundary (``reference.boundary_margin``: relative to the numbers the step added, about
#: 80 float32 units), by one level, and whose spike totals never differ by more than one after, took
#: a tie of exact arithmetic the other way (seed 700113: membrane 10.99998 against 11 in exact
#: arithmetic, the compiled SNN's one spike earlier): a tie, not a flip.
RATE_TIE_MARGIN = 1e-5


# ------------------------------------------------------------------------------------------------
# the network under construction
# ------------------------------------------------------------------------------------------------

@dataclass
class _T:
    """A tensor of the network being built: name, per-sample shape, and whether it depends on a
    quantizer's output (spike traffic once compiled)."""

    name: str
    shape: tuple
    spiking: bool


class _Net:
    def __init__(self, seed: int, forced: set[str], version: int = GENERATOR_VERSION):
        if version not in (1, 2, 3):
            raise ValueError(f"generator version {version} is not 1, 2 or 3")
        self.seed, self.version = seed, version
        self.rng = np.random.default_rng(seed)
        self.rounding_rng = np.random.default_rng([seed, 2])  # version 2's own stream
        self.activation_rng = np.random.default_rng([seed, 3])  # version 3's
        self.forced = set(forced)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.const_nodes: set[str] = set()  # initializers emitted as Constant nodes
        self.params: dict[str, np.ndarray] = {}  # quantizer scales, set by the calibration
        self.quantizers: list[dict] = []
        self.parts: list[str] = []
        self.used_functions: set[str] = set()
        self.count = 0
        self.constant_node_rate = 1.0 if "Constant" in forced else 0.1
        self.family = "pqa"  # of the quantizers: pqa, qcfs or mixed (set by random_network)
        self.opset = OPSET
        self.input_shape: tuple = ()

    # -- helpers ---------------------------------------------------------------------------------
    def uid(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def choice(self, items, p=None):
        return items[int(self.rng.choice(len(items), p=p))]

    def want(self, *ops) -> str | None:
        """The first forced op among ``ops`` still to place (and mark it placed)."""
        for op in ops:
            if op in self.forced:
                self.forced.discard(op)
                return op
        return None

    def const(self, value, dtype=np.float32, base="c") -> str:
        name = self.uid(base)
        arr = np.asarray(value, dtype=dtype)
        self.inits[name] = arr
        if arr.size <= 16 and self.chance(self.constant_node_rate):
            self.const_nodes.add(name)
        return name

    def weight(self, shape, fan_in: int, base="w") -> str:
        gain = float(np.exp(self.rng.uniform(-0.5, 0.5)))
        return self.const(self.rng.standard_normal(shape) * gain / math.sqrt(max(fan_in, 1)), base=base)

    def op(self, op_type: str, inputs, n_out: int = 1, domain: str = "", **attrs):
        outs = [self.uid(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.uid(op_type), domain=domain,
                                           **attrs))
        return outs[0] if n_out == 1 else outs

    def note(self, text: str):
        self.parts.append(text)

    # -- quantizers ------------------------------------------------------------------------------
    def quant(self, x: _T, form: str | None = None) -> _T:
        """A quantized activation on x in one of the recognised forms; λ is calibrated later."""
        rng = self.rng
        forced = self.want("QuantizeLinear", "DequantizeLinear")
        if forced:
            form = "qdq"
        elif self.want("Floor") or self.want("Clip"):
            form = "plain"
        if form is None:
            if self.family == "qcfs" or (self.family == "mixed" and self.chance(0.3)):
                form = self.choice(["qcfs_node", "plain_qcfs"], p=[0.6, 0.4])
            else:
                form = self.choice(["pqa_node", "plain", "qdq"], p=[0.5, 0.3, 0.2])
        levels = int(rng.integers(2, 17))
        k_max = levels if self.chance(0.7) else int(rng.integers(1, levels + 1))
        if form in ("qcfs_node", "plain_qcfs"):
            k_min, k_max = 0, levels
        elif form == "pqa_node" and self.chance(0.2):
            k_min = 0  # unsigned PQA (α = 0): a multi-spike AIF neuron, not QCFS
        else:
            k_min = -int(rng.integers(1, levels + 1)) if not self.chance(0.1) else -max(1, levels // 4)
        if form == "plain" and self.version >= 2:
            styles, p = zip(*_ROUNDING_STYLES)
            rounding = styles[int(self.rounding_rng.choice(len(styles), p=p))]
        else:
            rounding = "floor"
        q = {"input": x.name, "form": form, "levels": levels, "k_min": k_min, "k_max": k_max, "params": [],
             "rounding": rounding,
             "scale_kind": self.choice(["calibrated", "tiny", "huge"], p=[0.9, 0.05, 0.05]),
             "factor": float(np.exp(rng.uniform(math.log(0.4), math.log(1.5))))}
        first = len(self.nodes)
        y = self._quant_nodes(x, q)
        q["output"], q["nodes"] = y, [n.name for n in self.nodes[first:]]
        self.quantizers.append(q)
        extra = ("" if q["scale_kind"] == "calibrated" else "," + q["scale_kind"]) + (",per-channel" if q.get("per_channel") else "")
        extra += "" if q["rounding"] == "floor" else "," + q["rounding"]
        self.note(f"{form}(L={levels},[{k_min},{k_max}]{extra})")
        return _T(y, x.shape, True)

    def _param(self, q, base, fn) -> str:
        name = self.uid(base)
        self.params[name] = np.asarray(fn(1.0), np.float32)
        q["params"].append((name, fn))
        return name

    def _quant_nodes(self, x: _T, q: dict) -> str:
        form, levels, k_min, k_max = q["form"], q["levels"], q["k_min"], q["k_max"]
        if form in ("pqa_node", "qcfs_node"):
            op = "PQA" if form == "pqa_node" else "QCFS"
            lam = self._param(q, "lam", lambda s, L=levels: s * L)
            attrs = {"L": levels}
            if op == "PQA":
                attrs.update(alpha=float(np.float32(k_min / levels)), beta=float(np.float32(k_max / levels)))
            self.used_functions.add(op)
            return self.op(op, [x.name, lam], domain="pmsm", **attrs)
        if form in ("plain", "plain_qcfs"):
            pre = self.choice(["Div", "Mul"])
            post = self.choice(["Mul", "Div"], p=[0.8, 0.2])
            if pre == "Div" and post == "Mul" and self.chance(0.5):  # one shared scale initializer
                s = self._param(q, "scale", lambda s: s)
                s_pre = s_post = s
            else:
                s_pre = self._param(q, "scale_in", (lambda s: s) if pre == "Div" else (lambda s: 1.0 / s))
                s_post = self._param(q, "scale_out", (lambda s: s) if post == "Mul" else (lambda s: 1.0 / s))
            u = self.op(pre, [x.name, s_pre])
            bounds = lambda: [self.const(float(k_min), base="kmin"), self.const(float(k_max), base="kmax")]  # noqa: E731
            style = q.get("rounding", "floor")
            if style == "floor":
                level = self.op("Floor", [self.op("Add", [u, self.const(0.5, base="half")])])
                k = self.op("Clip", [level, *bounds()])
            elif style == "clip_round":
                k = self.op("Round", [self.op("Clip", [u, *bounds()])])
            else:
                level = self.op("Round", [u])
                if style == "round_ste":  # (round(u) − u) + u: Round(u) bit for bit
                    level = self.op("Add", [self.op("Sub", [level, u]), u])
                k = self.op("Clip", [level, *bounds()])
            return self.op(post, [k, s_post])
        # QuantizeLinear → [Clip] → DequantizeLinear, per tensor
        dtype = np.int8 if k_min < 0 or self.chance(0.5) else np.uint8
        info = np.iinfo(dtype)
        zp = int(self.rng.integers(max(info.min, info.min - k_min), min(info.max, info.max - k_max) + 1))
        zp = int(np.clip(zp if self.chance(0.5) else (0 if dtype == np.int8 else -k_min), info.min - k_min,
                         info.max - k_max))
        if len(x.shape) >= 1 and self.chance(0.03):  # per-channel scales (axis 1)
            c = x.shape[0]
            spread = self.rng.uniform(0.5, 2.0, c)
            s = self._param(q, "qscale", lambda s, spread=spread: s * spread)
            zp_name = self.const(np.full(c, zp), dtype=dtype, base="zp")
            q["per_channel"] = True
            ql = self.op("QuantizeLinear", [x.name, s, zp_name], axis=1)
            return self.op("DequantizeLinear", [ql, s, zp_name], axis=1)
        zp_name = self.const(zp, dtype=dtype, base="zp")
        s = self._param(q, "qscale", lambda s: s)
        s2 = s if self.chance(0.7) else self._param(q, "dqscale", lambda s: s)
        ql = self.op("QuantizeLinear", [x.name, s, zp_name])
        if self.chance(0.85):
            ql = self.op("Clip", [ql, self.const(zp + k_min, dtype=dtype, base="qmin"),
                                  self.const(zp + k_max, dtype=dtype, base="qmax")])
        else:  # the type's own range
            q["k_min"], q["k_max"] = info.min - zp, info.max - zp
            q["levels"] = q["k_max"]
        return self.op("DequantizeLinear", [ql, s2, zp_name])

    def maybe_quant(self, x: _T, p: float = 0.6) -> _T:
        return self.quant(x) if self.chance(p) else x

    # -- weighted layers ---------------------------------------------------------------------------
    def conv(self, x: _T, cout: int, k: int | None = None, group: int = 1, stride: int | None = None,
             bn: float = 0.3, same: bool = False) -> _T:
        """Conv (+ BN); ``same``: the output keeps the input's height and width."""
        c, h, w = x.shape
        k = k if k is not None else self.choice([1, 3, 3])
        k = min(k, h, w) if k > min(h, w) else k
        if same:
            k, stride = (k if k % 2 else 1), 1
        dilation = 2 if not same and k == 3 and min(h, w) >= 5 and self.chance(0.1) else 1
        pad = dilation * (k // 2) if same or self.chance(0.85) else 0
        stride = stride if stride is not None else (2 if min(h, w) >= 6 and self.chance(0.2) else 1)
        span = dilation * (k - 1) + 1
        ho, wo = (h + 2 * pad - span) // stride + 1, (w + 2 * pad - span) // stride + 1
        wname = self.weight((cout, c // group, k, k), (c // group) * k * k)
        inputs = [x.name, wname]
        if self.chance(0.7):
            inputs.append(self.const(self.rng.standard_normal(cout) * 0.3, base="b"))
        attrs = {"dilations": [dilation] * 2} if dilation > 1 else {}
        y = self.op("Conv", inputs, kernel_shape=[k, k], pads=[pad] * 4, strides=[stride] * 2, group=group, **attrs)
        kind = "dw" if group > 1 and group == c else (f"g{group}" if group > 1 else "")
        self.note(f"{kind}conv{k}x{k}/{stride}{'d2' if dilation > 1 else ''}({cout})")
        out = _T(y, (cout, ho, wo), x.spiking)
        return self.bn(out) if self.chance(bn) or self.want("BatchNormalization") else out

    def bn(self, x: _T) -> _T:
        c = x.shape[0]
        rng = self.rng
        gamma = rng.uniform(0.5, 1.5, c) * np.where(rng.random(c) < 0.1, -1.0, 1.0)
        inputs = [x.name, self.const(gamma, base="gamma"), self.const(rng.standard_normal(c) * 0.3, base="beta"),
                  self.const(rng.standard_normal(c) * 0.3, base="mean"), self.const(rng.uniform(0.1, 2.0, c), base="var")]
        eps = self.choice([None, 1e-5, 1e-3, 0.1, 0.5])
        attrs = {} if eps is None else {"epsilon": float(eps)}
        self.note(f"bn(eps={'default' if eps is None else eps})")
        return _T(self.op("BatchNormalization", inputs, **attrs), x.shape, x.spiking)

    def linear(self, x: _T, fout: int, bn: float = 0.25) -> _T:
        """Gemm (2-D) or MatMul [+ Add bias] (any rank ≥ 2) on the last axis."""
        f = x.shape[-1]
        if len(x.shape) == 1 and (self.want("Gemm") or self.chance(0.5)):
            trans_b = self.chance(0.5)
            w = self.weight((fout, f) if trans_b else (f, fout), f)
            attrs = {"transB": 1} if trans_b else {}
            if self.chance(0.15):
                attrs["alpha"] = float(self.choice([0.5, 2.0]))
            inputs = [x.name, w]
            if self.chance(0.7):
                inputs.append(self.const(self.rng.standard_normal(fout) * 0.3, base="b"))
                if self.chance(0.15):
                    attrs["beta"] = float(self.choice([0.5, 2.0]))
            y = self.op("Gemm", inputs, **attrs)
            self.note(f"gemm({fout}{',tB' if trans_b else ''}{',α' if 'alpha' in attrs else ''})")
        else:
            y = self.op("MatMul", [x.name, self.weight((f, fout), f)])
            if self.chance(0.6):
                b = self.const(self.rng.standard_normal(fout) * 0.3, base="b")
                y = self.op("Add", [y, b] if self.chance(0.7) else [b, y])
            self.note(f"matmul({fout})")
        out = _T(y, (*x.shape[:-1], fout), x.spiking)
        if len(x.shape) == 1 and (self.chance(bn) or self.want("BatchNormalization")):
            out = self.bn(out)
        return out


# ------------------------------------------------------------------------------------------------
# blocks: each maps a tensor to a tensor of the same rank (per sample)
# ------------------------------------------------------------------------------------------------

def _b_conv(net: _Net, x: _T) -> _T:
    cout = int(net.rng.integers(2, 5))
    return net.maybe_quant(net.conv(x, cout), 0.8)


def _b_dwconv(net: _Net, x: _T) -> _T:
    """Depthwise (group = channels) or, for an even channel count, grouped (group = 2) Conv."""
    c = x.shape[0]
    group = 2 if c % 2 == 0 and c > 2 and net.chance(0.3) else c
    return net.maybe_quant(net.conv(x, c, k=3, group=group), 0.8)


def _b_residual(net: _Net, x: _T) -> _T:
    c = x.shape[0]
    a = net.quant(net.conv(x, c, same=True))
    b = net.conv(a, c, same=True)
    s = net.op("Add", [x.name, b.name] if net.chance(0.5) else [b.name, x.name])
    net.note("residual-add")
    out = _T(s, x.shape, True)
    if net.chance(0.25) or net.want("BatchNormalization"):
        out = net.bn(out)
        net.note("(bn after add)")
    return net.quant(out) if net.chance(0.9) else out


def _b_concat(net: _Net, x: _T) -> _T:
    branches = []
    for _ in range(2):
        if net.chance(0.25) and x.spiking:
            branches.append(x)
        else:
            branches.append(net.quant(net.conv(x, int(net.rng.integers(1, 4)), same=True)))
    axis = 1 if net.chance(0.8) or branches[0].shape[0] != branches[1].shape[0] else int(net.choice([2, 3]))
    y = net.op("Concat", [b.name for b in branches], axis=axis)
    net.note(f"concat(axis={axis})")
    shape = list(branches[0].shape)
    shape[axis - 1] = sum(b.shape[axis - 1] for b in branches)
    return _T(y, tuple(shape), True)


def _b_slice_map(net: _Net, x: _T) -> _T:
    """Slice (channels or rows) or Gather (channels) of a feature map."""
    c, h, w = x.shape
    if net.want("Gather") or net.chance(0.4):
        idx = net.rng.integers(0, c, int(net.rng.integers(1, c + 1)))
        y = net.op("Gather", [x.name, net.const(idx, dtype=np.int64, base="idx")], axis=1)
        net.note("gather(channels)")
        return _T(y, (len(idx), h, w), x.spiking)
    axis = 1 if c > 1 and net.chance(0.6) else 2
    size = c if axis == 1 else h
    if size < 2:
        return x
    start = int(net.rng.integers(0, size - 1))
    end = int(net.rng.integers(start + 1, size + 1))
    y = net.op("Slice", [x.name, net.const([start], dtype=np.int64, base="starts"),
                         net.const([end], dtype=np.int64, base="ends"), net.const([axis], dtype=np.int64, base="axes")])
    net.note(f"slice(axis={axis},{start}:{end})")
    shape = list(x.shape)
    shape[axis - 1] = end - start
    return _T(y, tuple(shape), x.spiking)


def _b_static_skip(net: _Net, x: _T) -> _T:
    """Mixes spike traffic with a tensor computed from the network input alone (constant over
    time under rate coding): Add, or a product with it."""
    src = _T("input", net.input_shape, False)
    if len(x.shape) == 3 and len(src.shape) == 3 and src.shape[1:] == x.shape[1:]:
        static = net.conv(src, x.shape[0], same=True, bn=0.0)
    elif len(x.shape) == 1 and len(src.shape) == 1:
        static = net.linear(src, x.shape[0], bn=0.0)
    else:
        return _b_mix(net, x)
    op = net.choice(["Add", "Mul"], p=[0.7, 0.3])
    y = net.op(op, [x.name, static.name] if net.chance(0.5) else [static.name, x.name])
    net.note(f"static-skip({op})")
    return net.maybe_quant(_T(y, x.shape, x.spiking), 0.6)


def _b_pool(net: _Net, x: _T) -> _T:
    c, h, w = x.shape
    options = ["GlobalAveragePool", "GlobalMaxPool"]
    if min(h, w) >= 2:
        options += ["MaxPool", "AveragePool", "AveragePool3"]
    forced = net.want("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
    kind = forced if forced in options else net.choice(options)
    if kind == "MaxPool":
        y, shape = net.op("MaxPool", [x.name], kernel_shape=[2, 2], strides=[2, 2]), (c, h // 2, w // 2)
    elif kind == "AveragePool":
        y, shape = net.op("AveragePool", [x.name], kernel_shape=[2, 2], strides=[2, 2]), (c, h // 2, w // 2)
    elif kind == "AveragePool3":
        y = net.op("AveragePool", [x.name], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                   count_include_pad=int(net.chance(0.5)))
        shape = x.shape
    else:
        y, shape = net.op(kind, [x.name]), (c, 1, 1)
    net.note(kind.lower())
    return net.maybe_quant(_T(y, shape, x.spiking), 0.4)


def _b_pad(net: _Net, x: _T) -> _T:
    c, h, w = x.shape
    mode = net.choice(["constant", "constant", "constant", "reflect" if min(h, w) >= 2 else "edge", "edge"])
    pads = net.const([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64, base="pads")
    inputs = [x.name, pads]
    value = 0.0
    if mode == "constant" and net.chance(0.3):
        value = float(net.choice([0.0, 0.5]))
        inputs.append(net.const(value, base="padvalue"))
    y = net.op("Pad", inputs, mode=mode)
    net.note(f"pad({mode}{',' + str(value) if value else ''})")
    return _T(y, (c, h + 2, w + 2), x.spiking)


def _b_split_concat(net: _Net, x: _T) -> _T:
    if x.shape[0] < 2:
        x = net.quant(net.conv(x, int(net.rng.integers(2, 5)), stride=1))
    c, h, w = x.shape
    c1 = int(net.rng.integers(1, c))
    a, b = net.op("Split", [x.name, net.const([c1, c - c1], dtype=np.int64, base="split")], n_out=2, axis=1)
    net.note("split")
    pa = _mix_op(net, _T(a, (c1, h, w), x.spiking))
    pb = _T(b, (c - c1, h, w), x.spiking)
    if net.chance(0.5):
        pb = net.quant(pb)
    y = net.op("Concat", [pa.name, pb.name], axis=1)
    net.note("concat")
    return _T(y, x.shape, x.spiking or pa.spiking or pb.spiking)


def _b_transpose(net: _Net, x: _T) -> _T:
    c, h, w = x.shape
    t = net.op("Transpose", [x.name], perm=[0, 2, 3, 1])
    if net.chance(0.5):
        t = net.op("Mul", [t, net.const(net.rng.uniform(0.5, 1.5, c), base="chscale")])
    else:
        t = net.op("Add", [t, net.const(net.rng.standard_normal(c) * 0.3, base="chbias")])
    y = net.op("Transpose", [t], perm=[0, 3, 1, 2])
    net.note("transpose-roundtrip")
    return _T(y, x.shape, x.spiking)


def _b_unsqueeze(net: _Net, x: _T) -> _T:
    axis = len(x.shape) + 1 if net.chance(0.5) else 1
    u = net.op("Unsqueeze", [x.name, net.const([axis], dtype=np.int64, base="axes")])
    y = net.op("Squeeze", [u, net.const([axis], dtype=np.int64, base="axes")])
    net.note("unsqueeze-squeeze")
    return _T(y, x.shape, x.spiking)


def _b_gate(net: _Net, x: _T) -> _T:
    """Squeeze-excitation style: x · g(reduce(x)) — a product of two activations."""
    reduce = net.want("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1") or \
        net.choice(["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1"])
    axes = list(range(2, len(x.shape) + 1))
    r = net.op(reduce, [x.name, net.const(axes, dtype=np.int64, base="axes")], keepdims=1)
    gate = net.want("Sigmoid", "Tanh") or net.choice(["Sigmoid", "Tanh", "quant"])
    if gate == "quant":
        g = net.quant(_T(r, (x.shape[0],) + (1,) * (len(x.shape) - 1), x.spiking)).name
    else:
        g = net.op(gate, [r])
    y = net.op("Mul", [x.name, g])
    net.note(f"gate({reduce},{gate})")
    return _T(y, x.shape, True)


def _b_expand(net: _Net, x: _T) -> _T:
    net.want("Shape")
    shape = net.op("Shape", [x.name])
    kind = net.want("Expand", "ConstantOfShape") or net.choice(["Expand", "ConstantOfShape"])
    if kind == "ConstantOfShape":
        value = helper.make_tensor("value", TensorProto.FLOAT, [1], [float(net.rng.uniform(-1, 1))])
        e = net.op("ConstantOfShape", [shape], value=value)
        net.note("constantofshape(shape(x))")
    else:
        e = net.op("Expand", [net.const(net.rng.standard_normal((x.shape[0],) + (1,) * (len(x.shape) - 1)) * 0.3,
                                        base="bias"), shape])
        net.note("expand(c, shape(x))")
    y = net.op(net.choice(["Add", "Mul"], p=[0.7, 0.3]), [x.name, e])
    return _T(y, x.shape, x.spiking)


def _b_where(net: _Net, x: _T) -> _T:
    forced = net.want("Less", "Greater", "Equal", "GreaterOrEqual", "LessOrEqual")
    cmp = forced or net.choice(["Less", "Greater", "Equal", "GreaterOrEqual"])
    if net.version >= 3 and not forced and net.activation_rng.random() < 0.2:
        cmp = "LessOrEqual"  # version 3, from its own stream
    # version 3 (or forced): the mask combined with another by a logical op, from version 3's stream
    logical = net.want("And", "Or", "Xor", "Not")
    if logical is None and net.version >= 3 and net.activation_rng.random() < 0.4:
        logical = ["And", "Or", "Xor", "Not"][int(net.activation_rng.integers(4))]
    shape = (x.shape[0],) + (1,) * (len(x.shape) - 1)
    if net.chance(0.7):  # a constant mask (folds away)
        a = net.const(net.rng.integers(0, 3, shape).astype(np.float32), base="ma")
        cond = net.op(cmp, [a, net.const(1.0, base="mb")])
        where = "const-mask"
    else:  # a mask that depends on the spikes
        cond = net.op(cmp, [x.name, net.const(0.0, base="zero")])
        where = "spike-mask"
    if logical == "Not":
        cond = net.op("Not", [cond])
        where += ",not"
    elif logical is not None:  # with a second mask of x, at a threshold from version 3's stream
        other = net.op("Less", [x.name, net.const(float(net.activation_rng.uniform(0.2, 1.5)), base="hi")])
        cond = net.op(logical, [cond, other])
        where += f",{logical.lower()}"
    other = net.choice(["const", "neg", "scaled"])
    if other == "const":
        o = net.const(float(net.rng.uniform(-1, 1)), base="other")
    elif other == "neg":
        o = net.op("Neg", [x.name])
    else:
        o = net.op("Mul", [x.name, net.const(0.1, base="slope")])
    args = [cond, x.name, o] if net.chance(0.5) else [cond, o, x.name]
    y = net.op("Where", args)
    net.note(f"where({cmp},{where},{other})")
    return _T(y, x.shape, x.spiking)


def _b_sum(net: _Net, x: _T) -> _T:
    others = [net.quant(_mix_op(net, x, linear_only=True)) for _ in range(int(net.rng.integers(1, 3)))]
    y = net.op("Sum", [x.name] + [o.name for o in others])
    net.note(f"sum({len(others) + 1})")
    return _T(y, x.shape, True)


def _b_product(net: _Net, x: _T) -> _T:
    """A product of two quantized activations (activation × activation Mul)."""
    a = net.quant(_mix_op(net, x, linear_only=True))
    b = net.quant(_mix_op(net, x, linear_only=True))
    y = net.op("Mul", [a.name, b.name])
    net.note("act×act-mul")
    return net.maybe_quant(_T(y, x.shape, True), 0.5)


# ops that combine x with constants (or are elementwise functions), with an optional quantizer
_MIX = ["sub_cx", "sub_xc", "add_cx", "mul", "div", "neg", "pow", "max", "min", "clip", "relu", "leakyrelu",
        "abs", "tanh", "sigmoid", "erf", "gelu", "exp", "log", "sqrt", "reciprocal", "softmax", "cast", "castlike",
        "identity", "dropout", "round", "hardsigmoid", "hardswish", "softplus", "logsoftmax", "mean", "size"]
_MIX_OP = {"sub_cx": "Sub", "sub_xc": "Sub", "add_cx": "Add", "mul": "Mul", "div": "Div", "neg": "Neg", "pow": "Pow",
           "max": "Max", "min": "Min", "clip": "Clip", "relu": "Relu", "leakyrelu": "LeakyRelu", "abs": "Abs",
           "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "gelu": "Gelu", "exp": "Exp", "log": "Log",
           "sqrt": "Sqrt", "reciprocal": "Reciprocal", "softmax": "Softmax", "cast": "Cast", "castlike": "CastLike",
           "identity": "Identity", "dropout": "Dropout", "round": "Round", "hardsigmoid": "HardSigmoid",
           "hardswish": "HardSwish", "softplus": "Softplus", "logsoftmax": "LogSoftmax", "mean": "Mean", "size": "Size",
           "prelu": "PRelu", "elu": "Elu", "selu": "Selu", "celu": "Celu", "mish": "Mish", "softsign": "Softsign",
           "thresholdedrelu": "ThresholdedRelu"}
#: version 3: CNN activations that stand in for the elementwise ones of ``_SWAPPED`` (not in ``_MIX``:
#: the main stream draws what it drew in version 2)
_ACTIVATIONS = ["prelu", "elu", "selu", "celu", "mish", "softsign", "thresholdedrelu"]
_SWAPPED = {"relu", "abs", "tanh", "sigmoid", "erf", "hardswish", "softplus"}
_LINEAR_MIX = ["sub_cx", "sub_xc", "add_cx", "mul", "div", "neg", "identity", "cast", "dropout"]


def _mix_op(net: _Net, x: _T, linear_only: bool = False) -> _T:
    forced = [k for k, op in _MIX_OP.items() if op in net.forced]
    kinds = _LINEAR_MIX if linear_only else _MIX
    if forced and not linear_only:
        kind = forced[0]
        net.forced.discard(_MIX_OP[kind])
    else:
        weights = np.array([0.1 if k == "round" else 1.0 for k in kinds])
        kind = net.choice(kinds, p=weights / weights.sum())
        if net.version >= 3 and kind in _SWAPPED and net.activation_rng.random() < 0.6:
            kind = _ACTIVATIONS[int(net.activation_rng.integers(len(_ACTIVATIONS)))]
    rng = net.rng
    act_rng = net.activation_rng
    shape = x.shape

    def bconst(scale=1.0, positive=False):
        """A scalar or a per-channel constant broadcasting against x."""
        if net.chance(0.5):
            v = rng.uniform(0.5, 1.5) if positive else rng.uniform(-1, 1)
            return net.const(float(v) * scale, base="k")
        cshape = (shape[0],) + (1,) * (len(shape) - 1)
        v = rng.uniform(0.5, 1.5, cshape) if positive else rng.uniform(-1, 1, cshape)
        return net.const(v * scale, base="k")

    def shifted_abs():
        a = net.op("Abs", [x.name])
        return net.op("Add", [a, net.const(float(rng.uniform(0.5, 1.5)), base="one")])

    if kind == "sub_cx":
        y = net.op("Sub", [bconst(), x.name])
    elif kind == "sub_xc":
        y = net.op("Sub", [x.name, bconst()])
    elif kind == "add_cx":
        y = net.op("Add", [bconst(), x.name])
    elif kind == "mul":
        c = bconst()
        y = net.op("Mul", [x.name, c] if net.chance(0.5) else [c, x.name])
    elif kind == "div":
        y = net.op("Div", [x.name, bconst(positive=True)])
    elif kind == "neg":
        y = net.op("Neg", [x.name])
    elif kind == "pow":
        y = net.op("Pow", [x.name, net.const(float(net.choice([2.0, 3.0])), base="exponent")]) if net.chance(0.6) \
            else net.op("Pow", [shifted_abs(), net.const(0.5, base="exponent")])
    elif kind in ("max", "min"):
        y = net.op(kind.capitalize(), [x.name, bconst()])
    elif kind == "clip":
        y = net.op("Clip", [x.name, net.const(-0.5, base="lo"), net.const(float(rng.uniform(0.5, 2)), base="hi")])
    elif kind == "relu":
        y = net.op("Relu", [x.name])
    elif kind == "leakyrelu":
        y = net.op("LeakyRelu", [x.name], alpha=float(rng.uniform(0.01, 0.3)))
    elif kind in ("abs", "tanh", "sigmoid", "erf", "hardswish", "softplus"):
        y = net.op(_MIX_OP[kind], [x.name])
    elif kind == "gelu":
        y = net.op("Gelu", [x.name], approximate=net.choice(["none", "tanh"]))
    elif kind == "exp":
        y = net.op("Exp", [net.op("Neg", [net.op("Abs", [x.name])])])
    elif kind == "log":
        y = net.op("Log", [shifted_abs()])
    elif kind == "sqrt":
        y = net.op("Sqrt", [shifted_abs()])
    elif kind == "reciprocal":
        y = net.op("Reciprocal", [shifted_abs()])
    elif kind == "softmax":
        y = net.op("Softmax", [x.name], axis=net.choice([1, -1]))
    elif kind == "logsoftmax":
        y = net.op("LogSoftmax", [x.name], axis=net.choice([1, -1]))
    elif kind == "hardsigmoid":
        y = net.op("HardSigmoid", [x.name], alpha=float(rng.uniform(0.1, 0.5)))
    elif kind == "prelu":  # a slope per channel (first per-sample axis), or one
        cshape = (shape[0],) + (1,) * (len(shape) - 1) if act_rng.random() < 0.7 else (1,)
        y = net.op("PRelu", [x.name, net.const(act_rng.uniform(0.01, 0.5, cshape), base="slope")])
    elif kind in ("elu", "celu"):
        y = net.op(_MIX_OP[kind], [x.name], alpha=float(act_rng.uniform(0.3, 2.0)))
    elif kind == "thresholdedrelu":
        y = net.op("ThresholdedRelu", [x.name], alpha=float(act_rng.uniform(0.05, 1.0)))
    elif kind in ("selu", "mish", "softsign"):
        y = net.op(_MIX_OP[kind], [x.name])
    elif kind == "mean":
        y = net.op("Mean", [x.name, bconst()])
    elif kind == "size":  # x / (number of its elements): a divisor that is the input's metadata
        y = net.op("Div", [x.name, net.op("Cast", [net.op("Size", [x.name])], to=TensorProto.FLOAT)])
    elif kind == "cast":
        y = net.op("Cast", [x.name], to=TensorProto.FLOAT)
    elif kind == "castlike":
        y = net.op("CastLike", [x.name, net.const(0.0, base="like")])
    elif kind == "identity":
        y = net.op("Identity", [x.name])
    elif kind == "dropout":
        y = net.op("Dropout", [x.name])
    else:
        y = net.op("Round", [x.name])
    net.note(kind)
    return _T(y, shape, x.spiking)


def _b_spatial(net: _Net, x: _T) -> _T:
    """Rearrangements of a feature map: Tile, DepthToSpace, SpaceToDepth, Resize (nearest or linear)."""
    c, h, w = x.shape
    options = ["Tile", "Resize"] + (["DepthToSpace"] if c % 4 == 0 else []) + \
        (["SpaceToDepth"] if h % 2 == 0 and w % 2 == 0 else [])
    forced = net.want("Tile", "DepthToSpace", "SpaceToDepth", "Resize")
    kind = forced if forced in options else net.choice(options)
    if kind == "Tile":
        y, shape = net.op("Tile", [x.name, net.const([1, 1, 2, 1], dtype=np.int64, base="repeats")]), (c, 2 * h, w)
    elif kind == "DepthToSpace":
        y = net.op("DepthToSpace", [x.name], blocksize=2, mode=net.choice(["DCR", "CRD"]))
        shape = (c // 4, 2 * h, 2 * w)
    elif kind == "SpaceToDepth":
        y, shape = net.op("SpaceToDepth", [x.name], blocksize=2), (4 * c, h // 2, w // 2)
    else:
        mode = net.choice(["nearest", "linear"])
        y = net.op("Resize", [x.name, "", net.const([1.0, 1.0, 2.0, 2.0], base="scales")], mode=mode)
        shape = (c, 2 * h, 2 * w)
        kind = f"Resize-{mode}"
    net.note(kind.lower())
    return net.maybe_quant(_T(y, shape, x.spiking), 0.4)


def _b_mix(net: _Net, x: _T) -> _T:
    return net.maybe_quant(_mix_op(net, x), 0.6)


def _b_linear(net: _Net, x: _T) -> _T:
    fout = int(net.rng.integers(2, 9))
    return net.maybe_quant(net.linear(x, fout), 0.85)


def _b_residual_linear(net: _Net, x: _T) -> _T:
    f = x.shape[-1]
    a = net.quant(net.linear(x, f))
    b = net.linear(a, f, bn=0.0)
    s = net.op("Add", [x.name, b.name])
    net.note("residual-add")
    out = _T(s, x.shape, True)
    if len(x.shape) == 1 and (net.chance(0.3) or net.want("BatchNormalization")):
        out = net.bn(out)
        net.note("(bn after add)")
    return net.maybe_quant(out, 0.8)


def _b_token_mix(net: _Net, x: _T) -> _T:
    """MatMul with the constant first (W[S, S] · x[S, D]: mixing tokens, MLP-Mixer style)."""
    s, d = x.shape
    y = net.op("MatMul", [net.weight((s, s), s, base="wtok"), x.name])
    net.note("token-mix(W·x)")
    return net.maybe_quant(_T(y, x.shape, x.spiking), 0.7)


def _b_layernorm(net: _Net, x: _T) -> _T:
    f = x.shape[-1]
    inputs = [x.name, net.const(net.rng.uniform(0.5, 1.5, f), base="ln_scale")]
    if net.chance(0.7):
        inputs.append(net.const(net.rng.standard_normal(f) * 0.2, base="ln_bias"))
    eps = net.choice([1e-5, 1e-6, 1e-2])
    y = net.op("LayerNormalization", inputs, axis=-1, epsilon=float(eps))
    net.note("layernorm")
    return net.maybe_quant(_T(y, x.shape, x.spiking), 0.8)


def _b_softmax(net: _Net, x: _T) -> _T:
    y = net.op("Softmax", [x.name], axis=-1)
    net.note("softmax")
    return net.maybe_quant(_T(y, x.shape, x.spiking), 0.6)


def _b_select(net: _Net, x: _T) -> _T:
    """Slice or Gather on the feature axis (2-D)."""
    f = x.shape[-1]
    if f < 2:
        return x
    if net.want("Slice") or (not net.want("Gather") and net.chance(0.5)):
        start = int(net.rng.integers(0, f - 1))
        end = int(net.rng.integers(start + 1, f + 1))
        y = net.op("Slice", [x.name, net.const([start], dtype=np.int64, base="starts"),
                             net.const([end], dtype=np.int64, base="ends"), net.const([1], dtype=np.int64, base="axes")])
        net.note(f"slice[{start}:{end}]")
        return _T(y, (end - start,), x.spiking)
    idx = net.rng.integers(0, f, int(net.rng.integers(1, f + 1)))
    y = net.op("Gather", [x.name, net.const(idx, dtype=np.int64, base="idx")], axis=1)
    net.note("gather")
    return _T(y, (len(idx),), x.spiking)


def _b_attention(net: _Net, x: _T) -> _T:
    """Single-head attention on [S, D] tokens: Softmax(Q Kᵀ · d^−½) V with quantized Q, K, V."""
    s, d = x.shape
    dh = int(net.rng.integers(2, 5))
    q = net.quant(net.linear(x, dh, bn=0.0))
    k = net.quant(net.linear(x, dh, bn=0.0))
    v = net.quant(net.linear(x, dh, bn=0.0))
    kt = net.op("Transpose", [k.name], perm=[0, 2, 1])
    scores = net.op("MatMul", [q.name, kt])
    scores = net.op("Mul", [scores, net.const(1.0 / math.sqrt(dh), base="attn_scale")])
    attn = net.op("Softmax", [scores], axis=-1)
    attn_t = _T(attn, (s, s), True)
    if net.chance(0.5):
        attn_t = net.quant(attn_t)
    y = net.op("MatMul", [attn_t.name, v.name])
    net.note("attention")
    out = net.linear(_T(y, (s, dh), True), d, bn=0.0)
    if net.chance(0.5):
        out = _T(net.op("Add", [x.name, out.name]), x.shape, True)
        net.note("residual-add")
    return net.maybe_quant(out, 0.7)


def _b_mlp_gelu(net: _Net, x: _T) -> _T:
    f = x.shape[-1]
    h = net.linear(x, int(net.rng.integers(2, 9)), bn=0.0)
    if net.want("Erf") or net.chance(0.4):  # GELU as exported from x·½·(1 + erf(x/√2))
        e = net.op("Erf", [net.op("Div", [h.name, net.const(math.sqrt(2.0), base="sqrt2")])])
        g = net.op("Mul", [net.op("Mul", [h.name, net.const(0.5, base="half")]),
                           net.op("Add", [e, net.const(1.0, base="one")])])
        net.note("gelu(erf)")
    else:
        g = net.op("Gelu", [h.name])
        net.note("gelu")
    g_t = net.maybe_quant(_T(g, h.shape, h.spiking), 0.7)
    return net.maybe_quant(net.linear(g_t, f, bn=0.0), 0.7)


# name, function, ranks (per-sample), ops it can place, weight
_BLOCKS = [
    ("conv", _b_conv, {3}, {"Conv", "BatchNormalization"}, 3.0),
    ("dwconv", _b_dwconv, {3}, {"Conv"}, 1.0),
    ("residual", _b_residual, {3}, {"Add"}, 1.5),
    ("concat", _b_concat, {3}, {"Concat"}, 1.0),
    ("pool", _b_pool, {3}, {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}, 1.5),
    ("pad", _b_pad, {3}, {"Pad"}, 0.4),
    ("spatial", _b_spatial, {3}, {"Tile", "DepthToSpace", "SpaceToDepth", "Resize"}, 0.4),
    ("split_concat", _b_split_concat, {3}, {"Split"}, 0.5),
    ("transpose", _b_transpose, {3}, {"Transpose"}, 0.4),
    ("unsqueeze", _b_unsqueeze, {1, 2, 3}, {"Unsqueeze", "Squeeze"}, 0.3),
    ("gate", _b_gate, {2, 3}, {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1"}, 0.6),
    ("expand", _b_expand, {1, 2, 3}, {"Expand", "ConstantOfShape", "Shape"}, 0.4),
    ("where", _b_where, {1, 2, 3}, {"Where", "Less", "Greater", "Equal", "GreaterOrEqual", "LessOrEqual", "And", "Or",
                                    "Xor", "Not"}, 0.5),
    ("sum", _b_sum, {1, 2, 3}, {"Sum"}, 0.4),
    ("product", _b_product, {1, 2, 3}, set(), 0.5),
    ("mix", _b_mix, {1, 2, 3}, set(_MIX_OP.values()), 2.5),
    ("linear", _b_linear, {1, 2}, {"Gemm", "MatMul"}, 3.0),
    ("residual_linear", _b_residual_linear, {1, 2}, set(), 1.0),
    ("layernorm", _b_layernorm, {1, 2}, {"LayerNormalization"}, 0.8),
    ("softmax", _b_softmax, {1, 2}, set(), 0.5),
    ("select", _b_select, {1}, {"Slice", "Gather"}, 0.5),
    ("attention", _b_attention, {2}, set(), 1.5),
    ("mlp_gelu", _b_mlp_gelu, {2}, {"Erf"}, 0.8),
    ("slice_map", _b_slice_map, {3}, set(), 0.4),
    ("static_skip", _b_static_skip, {1, 3}, set(), 0.4),
    ("token_mix", _b_token_mix, {2}, set(), 0.4),
]
_BLOCK_BY_NAME = {b[0]: b for b in _BLOCKS}


# ------------------------------------------------------------------------------------------------
# heads: rank → [classes]
# ------------------------------------------------------------------------------------------------

def _flatten(net: _Net, x: _T, batch) -> _T:
    if len(x.shape) == 1:
        return x
    size = int(np.prod(x.shape))
    forced = net.want("Shape", "Gather", "Slice", "Reshape", "Flatten", "Unsqueeze", "Concat")
    kinds = ["flatten", "shape_gather", "shape_slice", "reshape_const", "reduce_mean"]
    if len(x.shape) == 3:
        kinds.append("gap")
    kind = {"Shape": "shape_gather", "Gather": "shape_gather", "Unsqueeze": "shape_gather", "Concat": "shape_gather",
            "Slice": "shape_slice", "Reshape": "reshape_const", "Flatten": "flatten"}.get(forced) or net.choice(kinds)
    if kind == "gap":
        x = _T(net.op("GlobalAveragePool", [x.name]), (x.shape[0], 1, 1), x.spiking)
        kind, size = "flatten", x.shape[0]
        net.note("globalaveragepool")
    if kind == "flatten":
        y = net.op("Flatten", [x.name], axis=1)
    elif kind in ("shape_gather", "shape_slice"):  # x.view(x.size(0), -1) as exported
        shape = net.op("Shape", [x.name])
        if kind == "shape_gather":
            n = net.op("Gather", [shape, net.const(0, dtype=np.int64, base="zero")], axis=0)
            n = net.op("Unsqueeze", [n, net.const([0], dtype=np.int64, base="axes")])
        else:
            n = net.op("Slice", [shape, net.const([0], dtype=np.int64, base="starts"),
                                 net.const([1], dtype=np.int64, base="ends")])
        target = net.op("Concat", [n, net.const([-1], dtype=np.int64, base="minus1")], axis=0)
        y = net.op("Reshape", [x.name, target])
    elif kind == "reshape_const":
        target = [batch if isinstance(batch, int) else 0, -1] if net.chance(0.7) else [-1, size]
        y = net.op("Reshape", [x.name, net.const(target, dtype=np.int64, base="shape")])
    else:
        axes = list(range(2, len(x.shape) + 1)) if len(x.shape) == 3 else [1]
        y = net.op("ReduceMean", [x.name, net.const(axes, dtype=np.int64, base="axes")], keepdims=0)
        size = x.shape[0] if len(x.shape) == 3 else x.shape[1]
        net.note("reducemean")
        return _T(y, (size,), x.spiking)
    net.note(kind)
    return _T(y, (size,), x.spiking)


# ------------------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------------------

def _input_shape(net: _Net, rank: int) -> tuple:
    rng = net.rng
    if rank == 3:
        return (int(rng.integers(1, 5)), int(rng.choice([2, 3, 4, 5, 6, 8])), int(rng.choice([2, 3, 4, 5, 6, 8])))
    if rank == 2:
        return (int(rng.integers(2, 5)), int(rng.integers(2, 7)))
    return (int(rng.integers(2, 13)),)


def random_network(seed: int, ops=(), version: int = GENERATOR_VERSION) -> tuple[onnx.ModelProto, str]:
    """A random small quantized ANN (valid ONNX, runs in onnxruntime) and a one-line description.

    ``ops``: standard ops that must appear (each placed in a valid role, e.g. ``"Where"``,
    ``"QuantizeLinear"``). The same seed (and ops, and ``version``: ``GENERATOR_VERSION``) always
    gives the same network. Its fuzz inputs are ``fuzz_inputs(model)``; what the generator chose is
    in the model's ``pmsm.fuzz`` metadata.
    """
    net = _Net(seed, set(ops), version)
    rng = net.rng
    net.family = net.choice(["pqa", "qcfs", "mixed"], p=[0.78, 0.12, 0.1])
    net.opset = OPSET if net.chance(0.85) else 21
    forced_blocks = [b for b in _BLOCKS if b[3] & net.forced]
    if forced_blocks:
        rank = int(net.choice(sorted(forced_blocks[0][2])))
    elif net.forced & {"Flatten", "Reshape"}:
        rank = 3  # only the head of a feature map places them
    else:
        rank = net.choice([3, 1, 2], p=[0.6, 0.2, 0.2])
    batch = int(rng.integers(1, 4)) if net.chance(0.35) else "N"
    samples = batch if isinstance(batch, int) else int(rng.integers(2, 7))
    shape = net.input_shape = _input_shape(net, rank)
    input_scale = float(10 ** rng.uniform(-3, 3)) if net.chance(0.2) else 1.0
    net.note(f"input[{batch},{','.join(map(str, shape))}]x{input_scale:.3g}")
    x = _T("input", shape, False)

    if net.chance(0.3):
        x = net.quant(x)  # PQA on the network input
        net.parts[-1] = "input-" + net.parts[-1]
    elif net.chance(0.08):  # a static op on the input (before any spike)
        static_op = net.choice(["Round", "Abs", "Floor", "ReduceL1"], p=[0.4, 0.4, 0.1, 0.1])
        if static_op == "ReduceL1":
            x = _T(net.op("Unsqueeze", [net.op("ReduceL1", [x.name, net.const([1], dtype=np.int64, base="axes")],
                                               keepdims=0), net.const([1], dtype=np.int64, base="axes")]),
                   (1,) + shape[1:], False) if rank > 1 else x
        else:
            x = _T(net.op(static_op, [x.name]), shape, False)
        net.note(f"static-{static_op.lower()}")

    n_blocks = int(rng.integers(1, 5))
    plan = [None] * n_blocks
    candidates = [b for b in _BLOCKS if rank in b[2]]
    for b in candidates:  # forced ops: place a block that can hold them
        if b[3] & net.forced and b[0] not in plan:
            plan[int(rng.integers(0, len(plan)))] = b[0]
    for i in range(n_blocks):
        if plan[i] is None:
            w = np.array([b[4] for b in candidates])
            plan[i] = candidates[int(rng.choice(len(candidates), p=w / w.sum()))][0]
    for name in plan:
        x = _BLOCK_BY_NAME[name][1](net, x)
        if len(x.shape) == 3 and x.shape[0] * x.shape[1] * x.shape[2] > 200:  # keep it tiny
            x = _T(net.op("MaxPool", [x.name], kernel_shape=[2, 2], strides=[2, 2]),
                   (x.shape[0], x.shape[1] // 2, x.shape[2] // 2), x.spiking)
            net.note("maxpool")

    outputs = []
    if net.chance(0.05) and x.spiking:
        outputs.append(x)  # an intermediate as a second output (first output stays the logits)
    if net.chance(0.07) and len(x.shape) == 3:
        head = x if net.quantizers else net.quant(x)  # no classifier: a feature map as the output
    else:
        flat = _flatten(net, x, batch)
        classes = int(rng.integers(2, 7))
        head = net.linear(flat, classes, bn=0.1)
        if not net.quantizers or net.chance(0.2):
            head = net.quant(head)  # PQA as the network output
            net.parts[-1] = "output-" + net.parts[-1]
        elif net.chance(0.05):
            head = _T(net.op("Softmax", [head.name], axis=-1), head.shape, head.spiking)
            net.note("softmax-output")
    outputs.insert(0, head)
    model = _assemble(net, batch, outputs, samples, input_scale)
    _calibrate(net, model)
    model = _finalize(net, model)
    return model, f"seed {seed}: " + " ".join(net.parts)


def _value_info(name, batch, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *shape])


def _assemble(net: _Net, batch, outputs, samples, input_scale) -> onnx.ModelProto:
    """The model with every quantizer scale as a graph input (for the calibration)."""
    inputs = [_value_info("input", batch, net.input_shape)]
    inputs += [helper.make_tensor_value_info(p, TensorProto.FLOAT, list(v.shape)) for p, v in net.params.items()]
    outs = []
    for i, o in enumerate(outputs):
        name = "logits" if i == 0 else "features"
        net.nodes.append(helper.make_node("Identity", [o.name], [name], name=net.uid("Output")))
        outs.append(_value_info(name, batch, o.shape))
    inits = [numpy_helper.from_array(v, k) for k, v in net.inits.items()]
    graph = helper.make_graph(net.nodes, f"fuzz_{net.seed}", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", net.opset)])
    model.ir_version = IR_VERSION
    if net.used_functions:
        from pmsm_compiler.ops import add_functions
        from pmsm_compiler.ops.quantizers import quantizer_functions

        add_functions(model, [f for f in quantizer_functions() if f.name in net.used_functions])
    meta = {"seed": net.seed, "version": net.version, "opset": net.opset, "input_scale": input_scale, "samples": samples, "batch": batch,
            "family": net.family, "quantizers": [{k: v for k, v in q.items() if k != "params"}
                                                 for q in net.quantizers]}
    model.metadata_props.add(key=FUZZ_METADATA_KEY, value=json.dumps(meta))
    return model


def fuzz_inputs(model: onnx.ModelProto) -> np.ndarray:
    """The network's fuzz inputs (also its calibration data): seeded normal × the input scale,
    as many samples as a fixed batch declares."""
    meta = _fuzz_meta(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value for d in dims[1:]]
    rng = np.random.default_rng([int(meta.get("seed", 0)), 1])
    return (rng.standard_normal((int(meta.get("samples", 4)), *shape)) * float(meta.get("input_scale", 1.0))
            ).astype(np.float32)


def _fuzz_meta(model) -> dict:
    for p in model.metadata_props:
        if p.key == FUZZ_METADATA_KEY:
            return json.loads(p.value)
    return {}


def _signal_scale(v: np.ndarray) -> float:
    """A robust magnitude of a quantizer's input: the 95th percentile of its positive values
    (of |v| when few are positive)."""
    v = v[np.isfinite(v)]
    pos = v[v > 0]
    src = pos if pos.size >= 3 else np.abs(v)
    m = float(np.quantile(src, 0.95)) if src.size else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def _calibrate(net: _Net, model: onnx.ModelProto) -> None:
    """Set every quantizer's step s (and so λ = s·L), in network order, from the signal it sees on
    the fuzz inputs with the earlier quantizers already set: s = m·factor / k_max, m the signal's
    scale; 'tiny' and 'huge' scales put nearly every level at a bound or at 0."""
    from pmsm_compiler.onnx_utils import with_outputs
    from pmsm_compiler.sessions import make_session

    x = fuzz_inputs(model)
    probes = [q["input"] for q in net.quantizers if q["input"] != "input"]
    session = make_session(with_outputs(model, probes), "disable", threads=1)
    names = [o.name for o in session.get_outputs()]
    values = dict(net.params)
    for q in net.quantizers:
        if q["input"] == "input":
            v = x
        else:
            out = dict(zip(names, session.run(None, {"input": x, **values})))
            v = out[q["input"]]
        m = _signal_scale(np.asarray(v, np.float64))
        factor = {"tiny": 1e-3, "huge": 1e3}.get(q["scale_kind"], q["factor"])
        s = m * factor / max(q["k_max"], 1)
        q["step"] = float(np.float32(s))
        q["lam"] = float(np.float32(s * q["levels"]))
        for pname, fn in q["params"]:
            values[pname] = np.array(fn(s), np.float32)
    net.params = {k: np.asarray(v, np.float32) for k, v in values.items()}


def _finalize(net: _Net, model: onnx.ModelProto) -> onnx.ModelProto:
    """Scales become initializers; some constants become Constant nodes; the model is checked
    (checker, strict shape inference) and run once in onnxruntime."""
    from pmsm_compiler.sessions import make_session

    params = set(net.params)
    graph = model.graph
    kept_inputs = [i for i in graph.input if i.name not in params]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    all_consts = {**net.inits, **net.params}
    if net.chance(net.constant_node_rate):
        net.const_nodes.update(p for p in params if net.chance(0.5))
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in all_consts.items() if k not in net.const_nodes]
    const_nodes = [helper.make_node("Constant", [], [k], name=net.uid("Constant"),
                                    value=numpy_helper.from_array(np.asarray(all_consts[k]), k))
                   for k in all_consts if k in net.const_nodes]
    nodes = const_nodes + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.node[:]
    graph.node.extend(nodes)
    meta = _fuzz_meta(model)
    meta["quantizers"] = [{k: v for k, v in q.items() if k != "params"} for q in net.quantizers]
    for p in model.metadata_props:
        if p.key == FUZZ_METADATA_KEY:
            p.value = json.dumps(meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    live = {o.name for o in graph.output}
    for node in reversed(graph.node):  # no dead code: every quantizer must reach an output
        if any(o in live for o in node.output):
            live.update(node.input)
    dead = [n.name for n in graph.node if not any(o in live for o in n.output)]
    if dead:
        raise AssertionError(f"generator bug: nodes {dead[:5]} reach no output")
    session = make_session(model, "disable", threads=1)
    session.run(None, {"input": fuzz_inputs(model)})
    return model


# ------------------------------------------------------------------------------------------------
# the differential checks
# ------------------------------------------------------------------------------------------------

@dataclass
class CheckResult:
    """One check of one network: ``status`` ok, refused (a clean refusal: not a failure), skipped
    (nothing to compare with: onnxruntime cannot run the ANN at that level) or fail (``category``
    names the kind of failure)."""

    check: str  # load, compile, parity, consistency, verify, cli
    mode: str | None
    opt_level: str | None
    status: str
    category: str | None = None
    message: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


def _crash_details(exc: BaseException) -> dict:
    tb = traceback.extract_tb(exc.__traceback__)
    return {"where": [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in tb[-4:]]}


def _refusal(check, mode, exc) -> CheckResult:
    """A clean refusal, unless its message is not one line."""
    text = str(exc)
    if "\n" in text or not text.strip():
        return CheckResult(check, mode, None, "fail", "refusal-message",
                           f"refusal message is not one line: {text[:300]!r}")
    return CheckResult(check, mode, None, "refused", None, text)


def _downstream(model: onnx.ModelProto, sources) -> set[str]:
    """Tensors that depend on any of ``sources`` in the (ANN) graph."""
    reached = set(sources)
    for node in model.graph.node:  # the loader checked the topological order
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


def _parity(ann_out: dict, ref, info: dict, mode: str, policy_layers: list[int], compare_outputs: bool,
            n: int, stats: dict | None = None) -> list[tuple[str, str, dict]]:
    """T = 1: the SNN's levels and outputs against the ANN's. Returns [(category, message, details)]."""
    failures = []
    flips = np.zeros(n, bool)
    mismatches = compared = 0
    per_layer = {}
    for j in policy_layers:
        layer = info["layers"][j]
        y = ann_out[layer["ann_output"]]
        k_ann = np.rint(y / np.float32(layer["ann_post_scale"]))  # as verify computes the ANN's level
        k = ref.levels_by_t[0][j]
        if k.shape != k_ann.shape:
            failures.append(("shape", f"layer {layer['name']}: SNN spikes {list(k.shape)} vs ANN levels "
                                      f"{list(k_ann.shape)}", {}))
            continue
        bad = ~((k_ann == k) | (np.isnan(k_ann) & np.isnan(k)))
        flips |= bad.reshape(n, -1).any(1)
        mismatches += int(bad.sum())
        compared += bad.size
        if bad.any():
            per_layer[layer["name"]] = int(bad.sum())
    rate = mismatches / compared if compared else 0.0
    details = {"level_mismatches": mismatches, "levels_compared": compared, "flip_rate": rate,
               "samples_with_flip": int(flips.sum()), "layers_with_flips": per_layer}
    out_diff, out_scale = 0.0, 0.0
    out_bad = []
    if compare_outputs:
        for name in info["outputs"]:
            a, s = ann_out[name], ref.all_outputs_by_t[0][name]
            if a.shape != s.shape:
                out_bad.append(f"{name}: shape {list(s.shape)} vs ANN {list(a.shape)}")
                continue
            keep = ~flips if mode == "folded" else np.ones(n, bool)
            a64, s64 = a[keep].astype(np.float64), s[keep].astype(np.float64)
            if not _equal(np.isnan(a64), np.isnan(s64)):
                out_bad.append(f"{name}: NaN in one model only")
                continue
            finite = np.isfinite(a64) & np.isfinite(s64)
            if not _equal(a64[~finite], s64[~finite]):
                out_bad.append(f"{name}: infinities differ")
                continue
            if finite.any():
                out_diff = max(out_diff, float(np.abs(a64[finite] - s64[finite]).max()))
            fa = np.abs(a.astype(np.float64))
            out_scale = max(out_scale, float(fa[np.isfinite(fa)].max()) if np.isfinite(fa).any() else 0.0)
            if mode == "exact" and not _equal(a, s):
                out_bad.append(f"{name}: not identical (max |diff| {out_diff:.3g})")
    rel = out_diff / out_scale if out_scale > 0 else (0.0 if out_diff == 0 else math.inf)
    details.update(max_abs_diff=out_diff, output_scale=out_scale, rel_diff=rel)
    if stats is not None:
        stats.update(details)
    if mode == "exact":
        if mismatches:
            failures.append(("exact-levels", f"{mismatches} level mismatch(es) at T=1 in {sorted(per_layer)}",
                             details))
        if out_bad:
            failures.append(("exact-outputs", "; ".join(out_bad), details))
    else:
        if rate > FOLDED_MAX_FLIP_RATE:
            failures.append(("folded-levels", f"level-flip rate {rate:.3g} > {FOLDED_MAX_FLIP_RATE:g} "
                                              f"({mismatches}/{compared})", details))
        if out_bad:
            failures.append(("folded-output", "; ".join(out_bad), details))
        elif rel > FOLDED_OUTPUT_RTOL:
            failures.append(("folded-output", f"outputs of samples without a level flip differ by {out_diff:.3g} "
                                              f"({rel:.3g} of max |output| {out_scale:.3g})", details))
    return failures


def _consistency(compiled, ref1, ref, x, timesteps: int, level: str, threads: int,
                 how: dict | None = None) -> list[tuple[str, str, dict]]:
    """The runtime's run_batch (T = 1 and T) against the step-by-step reference runs of the same
    length (``ref1``, ``ref``), and the reference's own invariants (counters = Σ|k|, integer spikes
    within [s_min, s_max]). A T = 1 run and the first step of a longer run are not compared bit for
    bit: only the former has no next state to compute, and a next state read off an op's value
    can stop onnxruntime from fusing that op with its consumer as in the ANN (last-bit
    differences). ``how`` receives the runtime's ``time_batch_report`` of the T-step run (steps
    per pass: the layer-by-layer mode is compared here too)."""
    from pmsm_compiler.runtime import SNNSession

    info = compiled.info
    failures = []
    if not _equal(ref.spikes, ref.spikes_recomputed):
        t, nn, j = np.argwhere(ref.spikes != ref.spikes_recomputed)[0]
        failures.append(("counters", f"spike counter of layer {info['layers'][j]['name']} at t={t + 1}: "
                                     f"{ref.spikes[t, nn, j]} != Σ|k| {ref.spikes_recomputed[t, nn, j]}", {}))
    if ref.non_integer_spikes:
        failures.append(("spikes-non-integer", f"non-integer spike counts: {ref.non_integer_spikes[:3]}", {}))
    for t, levels in enumerate(ref.levels_by_t):
        for layer, k in zip(info["layers"], levels):
            finite = k[np.isfinite(k)]
            if finite.size != k.size or (finite.size and (finite.min() < layer["s_min"] or finite.max() > layer["s_max"])):
                failures.append(("spike-range", f"layer {layer['name']} at t={t + 1}: spikes outside "
                                                f"[{layer['s_min']}, {layer['s_max']}]", {}))
                break
        else:
            continue
        break
    try:
        session = SNNSession(compiled.model, opt_level=level, threads=threads)
        r1 = session.run_batch(x, 1, keep_outputs=True)
        rt = session.run_batch(x, timesteps, keep_outputs=True)
        if how is not None:
            how.update(session.time_batch_report(len(x), timesteps))
    except Exception as exc:  # noqa: BLE001 - any exception of the runtime on a compiled model is a finding
        failures.append(("runtime-crash", _one_line(exc), _crash_details(exc)))
        return failures
    checks = [
        ("runtime-spikes", "spikes at T=1", r1.spikes, ref1.spikes),
        ("runtime-outputs", "outputs at T=1", r1.outputs_by_t, ref1.outputs_by_t),
        ("runtime-mean", "mean outputs at T=1", r1.mean_outputs, ref1.mean_outputs),
        ("runtime-predictions", "predictions at T=1", r1.predictions_by_t, ref1.predictions_by_t),
        ("runtime-spikes", f"spikes over T={timesteps}", rt.spikes, ref.spikes),
        ("runtime-outputs", f"outputs over T={timesteps}", rt.outputs_by_t, ref.outputs_by_t),
        ("runtime-mean", f"mean outputs at T={timesteps}", rt.mean_outputs, ref.mean_outputs),
        ("runtime-predictions", f"predictions over T={timesteps}", rt.predictions_by_t, ref.predictions_by_t),
    ]
    seen = set()
    for category, what, got, want in checks:
        if category in seen or _equal(got, want):
            continue
        seen.add(category)
        got, want = np.asarray(got), np.asarray(want)
        detail = {}
        if got.shape == want.shape and got.size:
            diff = np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want)) if got.dtype.kind == "f"
                                 else got == want))
            first = tuple(int(i) for i in diff[0])
            detail = {"first_difference": first, "runtime": float(got[first]), "reference": float(want[first]),
                      "count": int(len(diff))}
            if got.ndim >= 1 and "over" in what:
                detail["first_t"] = int(diff[0][0]) + 1
        else:
            detail = {"runtime_shape": list(got.shape), "reference_shape": list(want.shape)}
        failures.append((category, f"run_batch {what} differ from the step-by-step reference", detail))
    return failures


def _constant_scalar(model: onnx.ModelProto, name: str) -> float | None:
    for t in model.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return float(a) if a.size == 1 else None
    for node in model.graph.node:
        if node.op_type == "Constant" and list(node.output) == [name]:
            a = numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
            return float(a) if a is not None and a.size == 1 else None
    return None


def _quantizer_maps(model: onnx.ModelProto, q: dict, values: list[float]) -> list[np.ndarray]:
    """The ANN's own quantizer nodes (``q["nodes"]``) run in onnxruntime on per-sample tensors
    filled with each of ``values``."""
    from pmsm_compiler.sessions import make_session

    if not any(v.name == q["input"] for v in list(model.graph.value_info) + list(model.graph.input)):
        model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    nodes = [n for n in g.node if n.name in set(q["nodes"])]
    read = {i for n in nodes for i in n.input}
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(g.value_info) + list(g.input)}
    # a dimension shape inference left unknown (dim_value 0: an Expand to a computed shape) is
    # taken as 1: the per-tensor quantizer is elementwise, and an empty tensor would map nothing
    # (seed 200331: every map empty, so "equal", and a Relu taken as implied by a signed quantizer)
    sample = [d if d > 0 else 1 for d in dims[q["input"]][1:]]
    consts = [n for n in g.node if n.op_type == "Constant" and n.output[0] in read and n not in nodes]
    graph = helper.make_graph(consts + nodes, "quantizer",
                              [helper.make_tensor_value_info(q["input"], TensorProto.FLOAT, [len(values), *sample])],
                              [helper.make_tensor_value_info(q["output"], TensorProto.FLOAT, None)],
                              [t for t in g.initializer if t.name in read])
    sub = helper.make_model(graph, opset_imports=model.opset_import, functions=model.functions,
                            ir_version=model.ir_version)
    x = np.stack([np.full(sample, v, np.float32) for v in values])
    with np.errstate(over="ignore"):
        out = make_session(sub, "disable", threads=1, qdq_fusion=False).run(None, {q["input"]: x})[0]
    return list(out)


def _with_implied_clamps(model: onnx.ModelProto, q: dict) -> dict:
    """``q`` with each Relu/Clip right before it that it implies made part of it: where the
    quantizer Q maps the clamp c's bounds as it maps ∓∞, Q(c(x)) = Q(x) for every x, and a neuron
    of Q may read the clamp's input. The compiler makes this choice (``drop_implied_clamps``), and
    under rate coding it matters: a wrapped clamp at hi, just above Q's top level boundary, gives the
    neuron t·hi of input by step t, floor(½ + t·hi/θ) spikes, fewer than the t·k_max that Q(ā) says
    (seed 70932). Decided here by running the ANN's own quantizer nodes on the bounds, not by the
    compiler's code. A clamp with another reader, a graph output or a non-constant bound stays an
    op of its own."""
    g = model.graph
    readers = {}
    for node in g.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    outputs = {o.name for o in g.output}
    while True:
        clamp = next((n for n in g.node if q["input"] in n.output), None)
        if clamp is None or clamp.op_type not in ("Relu", "Clip") or clamp.domain not in ("", "ai.onnx"):
            return q
        if q["input"] in outputs or len(readers.get(q["input"], [])) != 1:
            return q
        if clamp.op_type == "Relu":
            lo, hi = 0.0, math.inf
        else:
            bounds = [(_constant_scalar(model, clamp.input[i]) if len(clamp.input) > i and clamp.input[i] else default)
                      for i, default in ((1, -math.inf), (2, math.inf))]
            if any(b is None or math.isnan(b) for b in bounds):
                return q
            lo, hi = bounds
        edge = np.float32(np.finfo(np.float32).max)
        q_lo, q_hi, q_min, q_max = _quantizer_maps(model, q, [lo, hi, -edge, edge])
        if not q_lo.size or not (np.array_equal(q_lo, q_min) and np.array_equal(q_hi, q_max)):
            return q
        q = {**q, "input": clamp.input[0], "nodes": [*q["nodes"], clamp.name]}


def _rate_neurons(model: onnx.ModelProto, info: dict) -> list[dict] | None:
    """The quantizers of a fuzz network (generator metadata, network order), each with the clamps
    before it that it implies (``_with_implied_clamps``), with the neuron the compiler made of each
    (info layers, matched by the ANN tensor they output)."""
    quantizers = [_with_implied_clamps(model, q) for q in _fuzz_meta(model).get("quantizers", []) if "output" in q]
    # the compiler drops an Identity between a quantizer and a graph output, whose name it keeps
    source = {node.output[0]: node.input[0] for node in model.graph.node if node.op_type == "Identity"}
    by_output = {}
    for layer in info["layers"]:
        name = layer["ann_output"]
        while name not in {q["output"] for q in quantizers} and name in source:
            name = source[name]
        by_output[name] = layer
    if not quantizers or len(quantizers) != len(info["layers"]) or any(q["output"] not in by_output
                                                                         for q in quantizers):
        return None
    keys = ("op", "theta_in", "theta_out", "s_min", "s_max")
    return [{"input": q["input"], "output": q["output"], "nodes": q["nodes"],
             "layer_output": by_output[q["output"]]["ann_output"], **{k: by_output[q["output"]][k] for k in keys}}
            for q in quantizers]


def _tied(k, want, bad, margins, i: int, steps: int) -> np.ndarray:
    """Per neuron (of [N, ...]): its levels part from the reference's by one level, first where the
    reference's membrane was within ``RATE_TIE_MARGIN`` of a boundary, and its spike totals never
    differ by more than one after (``RATE_TIE_MARGIN``)."""
    if margins is None:
        return np.zeros(k.shape[1:], bool)
    margin = np.stack([m[i] for m in margins[:steps]])
    parted = bad.any(0)
    first = np.argmax(bad, axis=0)  # the first step that differs (0 where none does)
    at = lambda a: np.take_along_axis(a, first[None], 0)[0]  # noqa: E731 - the value at that step
    delta = np.nan_to_num(k.astype(np.float64) - want, nan=np.inf)
    one_level = np.abs(at(delta)) == 1
    near = at(margin) <= RATE_TIE_MARGIN
    totals = np.abs(np.cumsum(delta, axis=0)).max(0) <= 1
    return parted & one_level & near & totals


def compare_rate_coding(ideal, ref, info: dict, neurons: list[dict], n: int, stats: dict | None = None
                        ) -> list[tuple[str, str, dict]]:
    """T > 1: the compiled SNN (``ref``, a ``run_reference`` result with levels kept) against rate
    coding computed from the ANN (``ideal``, from ``run_rate_coded_ann`` with ``neurons``). Returns
    [(category, message, details)]: ``rate-levels`` beyond ``RATE_MAX_FLIP_RATE`` level flips over
    all steps, ``rate-output`` beyond ``RATE_OUTPUT_RTOL`` on the running means of the samples
    without a flip; ``stats`` receives the measured deviations."""
    index = {q["layer_output"]: i for i, q in enumerate(neurons)}
    flips = np.zeros(n, bool)
    mismatches = compared = ties = 0
    first = None
    steps = len(ref.levels_by_t)
    for j, layer in enumerate(info["layers"]):
        i = index[layer["ann_output"]]
        k = np.stack([levels[j] for levels in ref.levels_by_t])
        want = np.stack([levels[i] for levels in ideal.levels_by_t[:steps]])
        if k.shape != want.shape:
            return [("rate-levels", f"layer {layer['name']}: spikes {list(k.shape[1:])} vs {list(want.shape[1:])}", {})]
        bad = ~((k == want) | (np.isnan(k) & np.isnan(want)))
        tied = _tied(k, want, bad, ideal.margins_by_t, i, steps)
        ties += int(tied.sum())
        bad &= ~tied[None]
        flips |= (bad | tied[None]).reshape(steps, n, -1).any((0, 2))
        if bad.any():
            t_first = int(np.argwhere(bad.reshape(steps, -1).any(1))[0][0])
            if first is None or t_first + 1 < first["t"]:
                first = {"t": t_first + 1, "layer": layer["name"]}
        mismatches += int(bad.sum())
        compared += bad.size
    rate = mismatches / compared if compared else 0.0
    keep = ~flips
    got, want = ref.mean_by_t[:, keep].astype(np.float64), ideal.mean_by_t[:, keep].astype(np.float64)
    finite = np.isfinite(got) & np.isfinite(want)
    diff = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
    fw = np.abs(ideal.mean_by_t.astype(np.float64))
    scale = float(fw[np.isfinite(fw)].max()) if np.isfinite(fw).any() else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    details = {"level_mismatches": mismatches, "levels_compared": compared, "flip_rate": rate,
               "samples_with_flip": int(flips.sum()), "first_flip": first, "tied_neurons": ties,
               "max_abs_diff": diff, "output_scale": scale, "rel_diff": rel, "timesteps": len(ref.levels_by_t)}
    if stats is not None:
        stats.update(details)
    failures = []
    if rate > RATE_MAX_FLIP_RATE:
        failures.append(("rate-levels", f"spikes over T={len(ref.levels_by_t)} differ from rate coding of the ANN: "
                                        f"flip rate {rate:.3g} (first at {first})", details))
    if not _equal(np.isnan(got), np.isnan(want)) or not _equal(got[~finite & ~np.isnan(got)],
                                                                 want[~finite & ~np.isnan(want)]):
        failures.append(("rate-output", "running means: NaN/inf differ from rate coding of the ANN", details))
    elif rel > RATE_OUTPUT_RTOL:
        failures.append(("rate-output", f"running mean outputs differ from rate coding of the ANN by {diff:.3g} "
                                        f"({rel:.3g} of max |mean| {scale:.3g}) on samples without a flip", details))
    return failures


def _cli(path: str, mode: str, workdir: str) -> tuple[int | None, str, str, bool]:
    """pmsm-compile through click's CliRunner: (exit code or None on an uncaught exception,
    stderr, the exception text, whether an output file was left)."""
    from click.testing import CliRunner

    from pmsm_compiler.cli.compile import main

    out = os.path.join(workdir, f"out_{mode}.snn.onnx")
    args = [path, "-o", out, "--samples", "16", "-q"] + (["--exact"] if mode == "exact" else [])
    result = CliRunner().invoke(main, args)
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return None, result.stderr, _one_line(exc), os.path.exists(out)
    return result.exit_code, result.stderr, "", os.path.exists(out)


def check_network(model: onnx.ModelProto, x: np.ndarray | None = None, modes=MODES, opt_levels=None,
                  timesteps: int = 4, verify_levels=None, cli_modes=(), threads: int = 1,
                  runtime_levels=None) -> list[CheckResult]:
    """Run the differential checks on one ANN; every failure is a CheckResult with status 'fail'.

    Per mode (a refusal is recorded and ends that mode), per onnxruntime level in ``opt_levels``
    (default: all four):

    - **parity** (T = 1, the ANN and the reference step in the same engine and level): the ANN's
      level of each AIF layer, rint(y / ann_post_scale) as ``verify.verify`` computes it, against
      the SNN's spikes; IF (QCFS) layers and the AIF layers after one are lossy by design and not
      compared, nor are the outputs of a model with IF layers. exact mode: every level and every
      output identical (``exact-levels``, ``exact-outputs``). folded mode: level-flip rate at most
      ``FOLDED_MAX_FLIP_RATE`` (``folded-levels``), and on the samples without a flip
      max|ANN − SNN| ≤ ``FOLDED_OUTPUT_RTOL`` · max|ANN output| (``folded-output``);
    - **consistency** (levels in ``runtime_levels``, default all of ``opt_levels``; building
      the sessions is most of a graph's time, and the T-step checks below run at these levels
      only): ``SNNSession.run_batch`` at T = 1 and
      T = ``timesteps`` against
      ``run_reference``: spikes, per-step outputs, mean outputs and predictions identical (both add
      float32 outputs into a float64 sum in the same order, so no tolerance), the counters equal
      to Σ|k| of the spike tensors, spikes integral and within [s_min, s_max];
    - **semantics** (T > 1, at ``runtime_levels``, fuzz networks, whose generator metadata names
      the quantizers): the
      reference's spikes and running means against ``run_rate_coded_ann`` on the ANN, at most
      ``RATE_MAX_FLIP_RATE`` level flips over all steps (``rate-levels``) and running means within
      ``RATE_OUTPUT_RTOL`` · max|mean| on the samples without a flip (``rate-output``);
    - **verify** (levels in ``verify_levels``, default the first of ``opt_levels``):
      ``verify.verify`` on the same inputs must pass where the parity checks pass and fail
      where they fail (``verify-disagrees``);
    - **cli** (modes in ``cli_modes``): ``pmsm-compile`` on the saved file must exit 0, or 1/2
      with one ``error:`` line on stderr and no output file, and agree with the API; for an image
      input (3 channels), ``pmsm-run`` on the SNN it wrote must exit 0 and report the reference's
      accuracy at every t and spike totals (``run-cli-*``).
    """
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.errors import InputError
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.onnx_utils import with_outputs
    from pmsm_compiler.sessions import OPT_LEVELS, make_session
    from pmsm_compiler.testing.reference import run_rate_coded_ann, run_reference
    from pmsm_compiler.verify import verify

    opt_levels = list(opt_levels or OPT_LEVELS)
    verify_levels = list(opt_levels[:1] if verify_levels is None else verify_levels)
    runtime_levels = list(opt_levels if runtime_levels is None else runtime_levels)
    x = fuzz_inputs(model) if x is None else x
    n = len(x)
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="pmsm-fuzz-") as workdir:
        path = os.path.join(workdir, "model.onnx")
        onnx.save(model, path)
        try:
            ann = load_model(path)
        except InputError as exc:
            results.append(_refusal("load", None, exc))
            return results
        except Exception as exc:  # noqa: BLE001
            results.append(CheckResult("load", None, None, "fail", "crash-load", _one_line(exc), _crash_details(exc)))
            return results
        ann_cache: dict = {}
        rate_neurons, rate_tried, ideal = None, set(), None
        api_state: dict = {}
        parity_ok: dict = {}
        for mode in modes:
            try:
                compiled = compile_model(ann, mode=mode)
            except InputError as exc:
                results.append(_refusal("compile", mode, exc))
                api_state[mode] = "refused"
                continue
            except Exception as exc:  # noqa: BLE001
                results.append(CheckResult("compile", mode, None, "fail", "crash-compile", _one_line(exc),
                                           _crash_details(exc)))
                api_state[mode] = "crash"
                continue
            api_state[mode] = "compiled"
            info = compiled.info
            results.append(CheckResult("compile", mode, None, "ok", details={
                "layers": len(info["layers"]), "wrappers": len(info["wrappers"]),
                "time_input": bool(info.get("time_input"))}))
            layers = info["layers"]
            if_outputs = [l["ann_output"] for l in layers if l["neuron"] != "AIF"]
            after_if = _downstream(ann, if_outputs) if if_outputs else set()
            policy = [j for j, l in enumerate(layers) if l["neuron"] == "AIF" and l["ann_output"] not in after_if]
            names = tuple(dict.fromkeys(list(info["outputs"]) + [l["ann_output"] for l in layers]))
            for level in opt_levels:
                # the verification's reference: the ANN with its computed constants evaluated (as the
                # SNN's are), Q/DQ as float simulation (no fusion into integer kernels)
                reference = compiled.reference if compiled.reference is not None else ann
                key = (level, names, reference is ann)
                try:
                    if key not in ann_cache:
                        sess = make_session(with_outputs(reference, names), level, threads=threads, qdq_fusion=False)
                        out_names = [o.name for o in sess.get_outputs()]
                        ann_cache[key] = dict(zip(out_names, sess.run(None, {sess.get_inputs()[0].name: x})))
                    ann_out = ann_cache[key]
                except Exception as exc:  # noqa: BLE001 - the engine cannot run the ANN at this level:
                    # nothing to compare with (an onnxruntime defect, not the compiler's)
                    results.append(CheckResult("parity", mode, level, "skipped", "ann-ort", _one_line(exc)))
                    continue
                try:
                    # a T = 1 run (the one the ANN-parity claim is about: its step has the ANN's graph
                    # around every wrapped op) and a T-step run
                    ref1 = run_reference(compiled, x, 1, level, keep_levels=True, keep_all_outputs=True,
                                         threads=threads)
                    ref = (run_reference(compiled, x, timesteps, level, keep_levels=True, keep_all_outputs=True,
                                         threads=threads) if level in runtime_levels else None)
                except Exception as exc:  # noqa: BLE001
                    results.append(CheckResult("parity", mode, level, "fail", "snn-ort", _one_line(exc),
                                               _crash_details(exc)))
                    parity_ok[(mode, level)] = False
                    continue
                stats = {}
                fails = _parity(ann_out, ref1, info, mode, policy, not if_outputs, n, stats)
                parity_ok[(mode, level)] = not fails
                for category, message, details in fails:
                    results.append(CheckResult("parity", mode, level, "fail", category, message, details))
                if not fails:
                    results.append(CheckResult("parity", mode, level, "ok",
                                               details={**stats, **_parity_stats(ref1, info, policy)}))
                if rate_neurons is None and mode not in rate_tried:
                    rate_tried.add(mode)
                    rate_neurons = _rate_neurons(model, info)
                    if rate_neurons is not None:
                        try:
                            ideal = run_rate_coded_ann(ann, rate_neurons, x, timesteps)
                        except Exception as exc:  # noqa: BLE001 - the ANN runs in the generator: a bug here is ours
                            results.append(CheckResult("semantics", mode, level, "fail", "harness",
                                                       _one_line(exc), _crash_details(exc)))
                            rate_neurons = False
                if ideal is not None and ref is not None and timesteps > 1:
                    stats: dict = {}
                    fails = compare_rate_coding(ideal, ref, info, rate_neurons, n, stats)
                    for category, message, details in fails:
                        results.append(CheckResult("semantics", mode, level, "fail", category, message, details))
                    if not fails:
                        results.append(CheckResult("semantics", mode, level, "ok", details=stats))
                if level in runtime_levels:
                    how: dict = {}
                    fails = _consistency(compiled, ref1, ref, x, timesteps, level, threads, how)
                    for category, message, details in fails:
                        results.append(CheckResult("consistency", mode, level, "fail", category, message,
                                                   {**details, "time_batched": how}))
                    if not fails:
                        results.append(CheckResult("consistency", mode, level, "ok", details={"time_batched": how}))
                if level in verify_levels:
                    results.append(_check_verify(verify, ann, compiled, x, mode, level, parity_ok[(mode, level)]))
        for mode in cli_modes:
            results.append(_check_cli(path, mode, workdir, api_state.get(mode), parity_ok.get((mode, "all"))))
            snn_path = os.path.join(workdir, f"out_{mode}.snn.onnx")
            if results[-1].status == "ok" and os.path.exists(snn_path) and x.ndim == 4 and x.shape[1] == 3:
                results.append(_check_run_cli(snn_path, x, workdir, mode))
    return results


def _parity_stats(ref, info, policy) -> dict:
    """Levels used at T = 1 (how much of each layer's range the fuzz inputs exercise)."""
    used, total = 0, 0
    for j in policy:
        k = ref.levels_by_t[0][j]
        layer = info["layers"][j]
        used += len(np.unique(k[np.isfinite(k)]))
        total += layer["s_max"] - layer["s_min"] + 1
    return {"distinct_levels": used, "level_range": total}


def _check_verify(verify, ann, compiled, x, mode, level, mine_ok: bool) -> CheckResult:
    try:
        v = verify(ann, compiled, x, opt_level=level, mode=mode)
    except Exception as exc:  # noqa: BLE001
        return CheckResult("verify", mode, level, "fail", "verify-crash", _one_line(exc), _crash_details(exc))
    details = {k: v.get(k) for k in ("passed", "failures", "level_agreement", "top1_agreement", "max_abs_diff")}
    if bool(v["passed"]) != mine_ok:
        what = ("verify passed a model the parity checks find wrong" if v["passed"]
                else f"verify failed a model the parity checks find correct: {'; '.join(v['failures'])}")
        return CheckResult("verify", mode, level, "fail", "verify-disagrees", what, details)
    return CheckResult("verify", mode, level, "ok", details=details)


def _check_run_cli(snn_path: str, x: np.ndarray, workdir: str, mode: str, timesteps: int = 3) -> CheckResult:
    """pmsm-run on the SNN that pmsm-compile wrote (float32 NCHW images with labels in an .npz,
    batches of 2): exit 0, and its report's accuracy at every t and spike totals per layer equal
    to the step-by-step reference's (labels: the reference's own predictions at T, so that the
    accuracy is 1 at T and varies before)."""
    from click.testing import CliRunner

    from pmsm_compiler.cli.run import main
    from pmsm_compiler.sessions import declared_batch
    from pmsm_compiler.snn_format import read_snn_info
    from pmsm_compiler.testing.reference import run_reference

    snn = onnx.load(snn_path)
    # in pmsm-run's batches (2, or the batch the model declares): a model may depend on its batch
    # (x / Size(x): seed 60260), and then only the same batches give the same results
    chunk = declared_batch(read_snn_info(snn).inputs[0].shape) or 2
    parts = [run_reference(snn, x[i:i + chunk], timesteps, "all") for i in range(0, len(x), chunk)]
    predictions = np.concatenate([p.predictions_by_t for p in parts], axis=1)
    spikes = np.concatenate([p.spikes for p in parts], axis=1)
    labels = predictions[-1]
    data, report_path = os.path.join(workdir, f"data_{mode}.npz"), os.path.join(workdir, f"run_{mode}.json")
    np.savez(data, x=x, y=labels)
    args = [snn_path, "-T", str(timesteps), "--data", data, "--batch-size", "2", "--normalization", "none",
            "--no-progress", "-q", "--json", report_path]
    result = CliRunner().invoke(main, args)
    exc = result.exception
    details = {"exit_code": result.exit_code, "stderr": result.stderr[-400:]}
    if exc is not None and not isinstance(exc, SystemExit):
        return CheckResult("run-cli", mode, "all", "fail", "run-cli-traceback", _one_line(exc), details)
    lines = result.stderr.strip().splitlines()
    if result.exit_code != 0:
        category = "run-cli-exit" if len(lines) == 1 and lines[0].startswith("error: ") else "run-cli-message"
        return CheckResult("run-cli", mode, "all", "fail", category,
                           f"pmsm-run exits {result.exit_code} on a compiled model: {lines[0] if lines else ''}", details)
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    want_acc = [float(np.mean(p == labels)) for p in predictions]
    got_spikes = [layer["spikes_total"] for layer in report["layers"]]
    want_spikes = [int(v) for v in spikes.sum(axis=(0, 1))]
    if report["accuracy_by_t"] != want_acc or got_spikes != want_spikes:
        details.update(accuracy_by_t=report["accuracy_by_t"], reference_accuracy=want_acc, spikes=got_spikes,
                       reference_spikes=want_spikes)
        return CheckResult("run-cli", mode, "all", "fail", "run-cli-report",
                           "pmsm-run's accuracy by t or spike totals differ from the step-by-step reference", details)
    return CheckResult("run-cli", mode, "all", "ok", details=details)


def _check_cli(path, mode, workdir, api_state, parity_ok) -> CheckResult:
    try:
        code, stderr, exc_text, left = _cli(path, mode, workdir)
    except Exception as exc:  # noqa: BLE001 - CliRunner itself
        return CheckResult("cli", mode, "all", "fail", "cli-traceback", _one_line(exc))
    details = {"exit_code": code, "stderr": stderr[-400:], "api": api_state}
    if code is None:
        return CheckResult("cli", mode, "all", "fail", "cli-traceback", exc_text, details)
    lines = stderr.strip().splitlines()
    if code not in (0, 1, 2):
        return CheckResult("cli", mode, "all", "fail", "cli-exit", f"exit code {code}", details)
    if code != 0:
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return CheckResult("cli", mode, "all", "fail", "cli-message",
                               f"exit {code} with {len(lines)} stderr line(s), not one 'error:' line", details)
        if left:
            return CheckResult("cli", mode, "all", "fail", "cli-partial-output", f"exit {code} left an output file",
                               details)
    if api_state == "refused" and code != 2:
        return CheckResult("cli", mode, "all", "fail", "cli-disagrees", f"the API refuses, the CLI exits {code}",
                           details)
    if api_state == "compiled" and code == 2:
        from pmsm_compiler.sessions import make_session

        try:  # the CLI verifies at level all: a model onnxruntime cannot run there is rightly refused
            make_session(onnx.load(path), "all")
        except Exception:  # noqa: BLE001
            return CheckResult("cli", mode, "all", "ok", details={**details, "note": "onnxruntime cannot run the "
                                                                                      "ANN at level all"})
        return CheckResult("cli", mode, "all", "fail", "cli-refuses", f"the API compiles, the CLI refuses: "
                                                                       f"{lines[0] if lines else ''}", details)
    if api_state == "compiled" and code == 1 and parity_ok:
        return CheckResult("cli", mode, "all", "fail", "cli-verify-disagrees",
                           f"the CLI's verification fails a model the parity checks find correct: "
                           f"{lines[0] if lines else ''}", details)
    return CheckResult("cli", mode, "all", "ok", details=details)


# ------------------------------------------------------------------------------------------------
# one graph end to end, and the summary of many
# ------------------------------------------------------------------------------------------------

def timesteps_for(seed: int, max_timesteps: int) -> int:
    """T for a graph's consistency check: 2..max_timesteps, varied over seeds."""
    return 2 + seed % max(1, max_timesteps - 1) if max_timesteps >= 2 else 1


def run_graph(seed: int, modes=MODES, opt_levels=None, max_timesteps: int = 8, cli: bool = False,
              verify_levels=None, threads: int = 1, runtime_levels: str = "all",
              version: int = GENERATOR_VERSION) -> dict:
    """Generate the network of ``seed`` (generator ``version``) and check it; a JSON-able record (a
    generator failure is a failure of category ``generator``)."""
    import time

    from pmsm_compiler.sessions import OPT_LEVELS

    start = time.perf_counter()
    opt_levels = list(opt_levels or OPT_LEVELS)
    record = {"seed": seed, "version": version, "description": None, "nodes": None, "ops": [], "results": []}
    try:
        model, description = random_network(seed, version=version)
    except Exception as exc:  # noqa: BLE001 - a bug of the generator: reported like any failure
        record["results"] = [CheckResult("generate", None, None, "fail", "generator", _one_line(exc),
                                         _crash_details(exc)).to_dict()]
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record
    record.update(description=description, nodes=len(model.graph.node),
                  ops=sorted({n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.node}))
    if verify_levels is None:  # one level per graph, rotating
        verify_levels = [opt_levels[seed % len(opt_levels)]]
    if runtime_levels == "rotate":  # the users' default level, and one more rotating over the others
        others = [lv for lv in opt_levels if lv != "all"]
        runtime_levels = [lv for lv in opt_levels if lv == "all"] + ([others[seed % len(others)]] if others else [])
    elif runtime_levels == "all":
        runtime_levels = opt_levels
    else:
        raise ValueError(f"runtime_levels must be 'all' or 'rotate', got {runtime_levels!r}")
    results = check_network(model, modes=modes, opt_levels=opt_levels, timesteps=timesteps_for(seed, max_timesteps),
                            verify_levels=verify_levels, cli_modes=modes if cli else (), threads=threads,
                            runtime_levels=runtime_levels)
    record["results"] = [r.to_dict() for r in results]
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


def refusal_reason(message: str) -> str:
    """A refusal message with the names taken out, so that refusals group by reason."""
    import re

    text = message.split("; supported:")[0]
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"(?<![A-Za-z_\d])-?\d+(\.\d+)?(e-?\d+)?", "N", text)
    return text[:160]


def summarize(records: list[dict]) -> dict:
    """Counts over graph records: compiled / refused (by reason) / failed (by category) per mode,
    the smallest failing graph per category, op coverage, timing."""
    from collections import Counter

    compiled, refused, failed_graphs, skipped = Counter(), {}, {}, Counter()
    fail_results = Counter()
    smallest: dict[str, dict] = {}
    ops = Counter()
    for rec in records:
        ops.update(rec.get("ops", []))
        cats = set()
        for r in rec["results"]:
            if r["check"] == "compile" and r["status"] == "ok":
                compiled[r["mode"]] += 1
            if r["status"] == "refused":
                refused.setdefault(r["mode"] or "load", Counter())[refusal_reason(r["message"])] += 1
            if r["status"] == "skipped":
                skipped[f"{r['category']}: {refusal_reason(r['message'])[:120]}"] += 1
            if r["status"] == "fail":
                fail_results[r["category"]] += 1
                if r["category"] not in cats:
                    cats.add(r["category"])
                    failed_graphs.setdefault(r["category"], []).append(rec["seed"])
                    best = smallest.get(r["category"])
                    if best is None or (rec["nodes"] or 0) < best["nodes"]:
                        smallest[r["category"]] = {"seed": rec["seed"], "version": rec.get("version", 1),
                                                   "nodes": rec["nodes"] or 0,
                                                   "description": rec["description"], "check": r["check"],
                                                   "mode": r["mode"], "opt_level": r["opt_level"],
                                                   "message": r["message"]}
    return {
        "graphs": len(records),
        "compiled": dict(compiled),
        "refused": {mode: dict(c.most_common()) for mode, c in refused.items()},
        "skipped": dict(skipped.most_common()),
        "failed_graphs": {cat: len(seeds) for cat, seeds in sorted(failed_graphs.items())},
        "failed_results": dict(sorted(fail_results.items())),
        "failing_seeds": {cat: seeds[:50] for cat, seeds in sorted(failed_graphs.items())},
        "smallest": dict(sorted(smallest.items())),
        "graphs_with_failures": sum(1 for rec in records if any(r["status"] == "fail" for r in rec["results"])),
        "op_coverage": dict(sorted(ops.items())),
        "seconds": round(sum(rec.get("seconds", 0.0) for rec in records), 1),
    }
