"""A step-by-step reference for a compiled SNN, written independently of ``pmsm_compiler.runtime``.

It drives the one-step compiled model (docs/snn-format.md) the plainest way: one onnxruntime
session of the whole step model (no static prologue, no step variants, no fused kernels, no
buffers shared between steps; step 1 with the temporal wrappers as identities, as the format
defines it: ``first_step_model``), numpy state arrays, a Python loop over t = 1..T:

    feeds(t)  = {input: x, state_i: s_i(t−1), pmsm_t: [t]}     s_i(0) = ½ or 0 (membrane), 0 (wrappers)
    y(t), s(t), c(t) = step(feeds(t))                         c: the int64 spike-count output
    Σ(t)      = Σ_{τ≤t} y(τ)      (float64, adding the float32 outputs in order)
    ȳ(t)      = Σ(t) / t          (float64)          predictions(t) = argmax ȳ(t) per sample
    mean_outputs = float32(Σ(T) / T)
    spikes_recomputed[t, :, l] = Σ |k_l(t)| over layer l's neurons, from its spike tensor

The initial states are fed full-size (the shape each state's next value has at t = 1, found by
a first probe step from broadcast initial values), as a runtime that allocates its buffers up
front would; the initial values come from the format (membrane ½, wrapper sums 0) and must agree
with ``info["states"][i]["init"]``.

Comparable with ``runtime.session.SNNSession.run_batch`` (``BatchResult``): run_batch also adds
the first output's float32 steps into a float64 sum (``out_sum + step_out``), divides once by T
and casts to float32 for ``mean_outputs``, so ``mean_outputs`` and ``outputs_by_t`` are expected
bit-identical. One difference: run_batch takes its predictions as the argmax of the running
*sum*; the reference takes the argmax of the running *mean* Σ(t)/t, as "argmax of the average up
to step t" defines it. Dividing by t > 0 preserves order; the two can only differ if two distinct
float64 sums collapse to the same quotient and the tie is broken differently, which needs sums
within one float64 ulp of each other (not seen in practice; a disagreement is reported, not
hidden). For an output with fewer than two axes the prediction is 0, as in run_batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pmsm_compiler.metadata import get_metadata
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.ops.neurons import INITIAL_MEMBRANES
from pmsm_compiler.sessions import make_session
from pmsm_compiler.snn_format import SNN_METADATA_KEY

#: Initial value of each kind of wrapper state, from the compiled-model format (docs/snn-format.md);
#: a membrane starts at its neuron op's value (½ for AIF and IF, 0 for AIFHalfEven).
INITIAL_STATE = {"input_sum": 0.0, "cumulative_output": 0.0}


@dataclass
class ReferenceResult:
    mean_outputs: np.ndarray  # float32: first output averaged over the T steps
    outputs_by_t: np.ndarray  # float32 [T, N, ...]: the first output of each step
    mean_by_t: np.ndarray  # float64 [T, N, ...]: running mean Σ(t)/t
    predictions_by_t: np.ndarray  # int64 [T, N]: argmax of the running mean
    spikes: np.ndarray  # int64 [T, N, layers]: the model's own spike-count output
    spikes_recomputed: np.ndarray  # int64 [T, N, layers]: Σ|k| from the exposed spike tensors
    levels_by_t: list | None = None  # per step, per layer: the spike tensor k (float32), if kept
    all_outputs_by_t: list | None = None  # per step: {output name: array} for every network output
    non_integer_spikes: list | None = None  # (t, layer name) where a spike tensor held a non-integer


def _info_and_model(model):
    """(model, its record as the JSON documented in docs/snn-format.md): the reference reads the
    file's contract, not the compiler's types."""
    if hasattr(model, "info") and hasattr(model, "model"):  # a CompiledModel
        return model.model, model.info.to_json()
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"expected an onnx.ModelProto or a CompiledModel, got {type(model).__name__}")
    info = get_metadata(model, SNN_METADATA_KEY)
    if info is None:
        raise ValueError("not a compiled SNN model (no 'pmsm.snn' metadata)")
    return model, info


def initial_value(state: dict, layer_ops: dict | None = None) -> float:
    """The format's initial value for a state; refuses metadata that says otherwise.
    ``layer_ops``: layer name → neuron op, for membranes."""
    kind = state.get("kind")
    if kind == "membrane":
        value = INITIAL_MEMBRANES[(layer_ops or {}).get(state.get("layer"), "AIF")]
    elif kind in INITIAL_STATE:
        value = INITIAL_STATE[kind]
    else:
        raise ValueError(f"state {state['input']!r} has unknown kind {kind!r}")
    if float(state.get("init", value)) != value:
        raise ValueError(f"state {state['input']!r} ({kind}) has init {state['init']} in the metadata; "
                         f"the format says {value}")
    return value


def first_step_model(model: onnx.ModelProto, info: dict, last: bool) -> onnx.ModelProto:
    """The step model as the format defines step 1: every temporal wrapper is the identity around
    its op at t = 1 (S_1/1 = x, F_1 − F_0 = f(x)), so its op reads the wrapped inputs themselves
    and its consumers read the op's value (the wrapper records name them). Same values; the
    graph around the op is then the ANN's, which onnxruntime optimizes as it does the ANN.
    ``last`` (a T = 1 run): the next states are not outputs, and what only they needed is
    pruned, so that no extra reader of an op's value stops onnxruntime fusing it as in the ANN."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if last:
        state_outputs = {st["output"] for st in info["states"]}
        kept = [o for o in m.graph.output if o.name not in state_outputs]
        del m.graph.output[:]
        m.graph.output.extend(kept)
    graph_outputs = {o.name for o in m.graph.output}
    for w in info["wrappers"]:
        if "value" not in w:
            continue
        op = next(n for n in m.graph.node if w["value"] in n.output)
        for i, name in zip(w["input_index"], w["inputs"]):
            op.input[i] = name
        if w["output"] not in graph_outputs:
            for node in m.graph.node:
                node.input[:] = [w["value"] if i == w["output"] else i for i in node.input]
    if last:  # keep the nodes the outputs need (in order)
        producer = {o: j for j, n in enumerate(m.graph.node) for o in n.output if o}
        needed, todo = set(), list(graph_outputs)
        while todo:
            j = producer.get(todo.pop())
            if j is not None and j not in needed:
                needed.add(j)
                todo.extend(i for i in m.graph.node[j].input if i)
        kept_nodes = [n for j, n in enumerate(m.graph.node) if j in needed]
        del m.graph.node[:]
        m.graph.node.extend(kept_nodes)
    return m


def _predictions(mean: np.ndarray, n: int) -> np.ndarray:
    if mean.ndim < 2:
        return np.zeros(n, np.int64)
    return mean.reshape(n, -1).argmax(1).astype(np.int64)


def run_reference(model, x, timesteps: int, opt_level: str = "all", keep_levels: bool = False,
                  keep_all_outputs: bool = False, threads: int = 1) -> ReferenceResult:
    """Run the compiled SNN ``model`` (ModelProto with ``pmsm.snn`` metadata, or CompiledModel) on
    ``x`` (the first input's array, or {input name: array}) for ``timesteps`` steps."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    model, info = _info_and_model(model)
    layers = info["layers"]
    spike_names = [layer["spike_tensor"] for layer in layers]
    session = make_session(with_outputs(model, spike_names), opt_level, threads=threads, qdq_fusion=False)
    first_session = make_session(with_outputs(first_step_model(model, info, last=timesteps == 1), spike_names),
                                 opt_level, threads=threads, qdq_fusion=False)
    output_names = {sess: [o.name for o in sess.get_outputs()] for sess in (session, first_session)}
    input_names = {sess: {i.name for i in sess.get_inputs()} for sess in (session, first_session)}
    data = dict(x) if isinstance(x, dict) else {info["inputs"][0]["name"]: x}
    n = next(iter(data.values())).shape[0]
    time_name = info.get("time_input")
    first_output = info["outputs"][0]
    counts_name = info["spike_counts_output"]
    layer_ops = {layer["name"]: layer["op"] for layer in layers}
    inits = {s["input"]: initial_value(s, layer_ops) for s in info["states"]}
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}

    def step(states, t, sess=None):
        feeds = {**data, **states}
        if time_name:
            feeds[time_name] = np.array([t], np.float32)
        sess = sess or (first_session if t == 1 else session)
        feeds = {k: v for k, v in feeds.items() if k in input_names[sess]}
        return dict(zip(output_names[sess], sess.run(None, feeds)))

    # Probe: the full size of every state is the size of its next value at t = 1.
    probe = step({name: np.full([1] * ranks[name], v, np.float32) for name, v in inits.items()}, 1, session)
    states = {s["input"]: np.full(probe[s["output"]].shape, inits[s["input"]], np.float32)
              for s in info["states"]}

    outputs, means, preds = [], [], np.empty((timesteps, n), np.int64)
    counts = np.empty((timesteps, n, len(layers)), np.int64)
    recomputed = np.empty((timesteps, n, len(layers)), np.int64)
    levels = [] if keep_levels else None
    all_outputs = [] if keep_all_outputs else None
    non_integer = []
    total = None
    for t in range(1, timesteps + 1):
        out = step(states, t)
        y = out[first_output]
        total = y.astype(np.float64) if total is None else total + y
        mean = total / t
        outputs.append(y)
        means.append(mean)
        preds[t - 1] = _predictions(mean, n)
        counts[t - 1] = out[counts_name]
        for j, (layer, name) in enumerate(zip(layers, spike_names)):
            k = out[name]
            if not np.array_equal(k, np.rint(k)):
                non_integer.append((t, layer["name"]))
            recomputed[t - 1, :, j] = np.abs(np.rint(k).astype(np.int64)).reshape(n, -1).sum(1)
        if keep_levels:
            levels.append([out[name] for name in spike_names])
        if keep_all_outputs:
            all_outputs.append({name: out[name] for name in info["outputs"]})
        if t < timesteps:
            states = {s["input"]: out[s["output"]] for s in info["states"]}
    return ReferenceResult(
        mean_outputs=(total / timesteps).astype(np.float32), outputs_by_t=np.stack(outputs),
        mean_by_t=np.stack(means), predictions_by_t=preds, spikes=counts, spikes_recomputed=recomputed,
        levels_by_t=levels, all_outputs_by_t=all_outputs, non_integer_spikes=non_integer)


# ------------------------------------------------------------------------------------------------
# rate coding from first principles, computed from the ANN
# ------------------------------------------------------------------------------------------------

@dataclass
class RateCodedResult:
    levels_by_t: list  # per step, per quantizer: the spike counts k
    outputs_by_t: np.ndarray  # float32 [T, N, ...]: the first output of each step
    mean_by_t: np.ndarray  # float32 [T, N, ...]: the running mean of the first output
    # per step, per quantizer: how near the membrane m came to a boundary where k changes, relative
    # to the size of the numbers the step added up (``boundary_margin``); None when not recorded
    margins_by_t: list | None = None


def boundary_margin(op: str, m: np.ndarray, current: np.ndarray, s_min, s_max) -> np.ndarray:
    """|m − the nearest boundary of m| / max(1, |m|, |current|), where crossing that boundary
    changes the neuron's k (AIF's integers b, from level b − 1 to b; AIFHalfEven's half-integers
    b + ½, from b to b + 1; IF's 1), and inf where the caps s_min, s_max hold k on both sides of it.
    A rate-coded reference and the compiled SNN add up the same currents in another float order: a
    level on which they disagree at a margin of a few float32 units is a tie of exact arithmetic,
    not a wrong spike."""
    m = m.astype(np.float64)
    if op == "IF":
        nearest, below, above = np.ones_like(m), np.zeros_like(m), np.ones_like(m)
    elif op == "AIFHalfEven":
        nearest = np.floor(m) + 0.5
        below, above = nearest - 0.5, nearest + 0.5
    else:
        nearest = np.rint(m)
        below, above = nearest - 1, nearest
    margin = np.abs(m - nearest) / np.maximum(1.0, np.maximum(np.abs(m), np.abs(current.astype(np.float64))))
    moves = (np.clip(below, s_min, s_max) != np.clip(above, s_min, s_max)) if op != "IF" else np.ones(m.shape, bool)
    return np.where(moves, margin, np.inf)


def run_rate_coded_ann(ann: onnx.ModelProto, neurons: list[dict], x: np.ndarray, timesteps: int,
                       opt_level: str = "disable") -> RateCodedResult:
    """What a rate-coded SNN of ``ann`` must compute, from the definition, without the compiler's
    graph: every quantizer of the ANN becomes a neuron in numpy, everything else is the ANN itself.

    ``neurons``: one dict per quantizer, in network order: ``input`` and ``output`` (ANN tensor
    names), ``nodes`` (the names of the ANN nodes that make up the quantizer), ``op`` (the neuron:
    AIF, AIFHalfEven for a source that rounds half to even, or IF), ``theta_in``, ``theta_out``,
    ``s_min``, ``s_max``.

    Let a_j(t) = θ_out,j · k_j(t) be neuron j's output and ā_j(t) its running mean. Under rate
    coding the time average of every tensor between neurons is the ANN's function G of the time
    averages of the neuron outputs (and of the constant input): linear ops commute with the
    average, and each non-linear op is defined to (the temporal wrapper). So neuron j receives

        x_j(t) = t · G_j(ā(t)) − (t − 1) · G_j(ā(t − 1))        (its input at step t)
        m = u + x_j(t)/θ_in,j,  u = m − k,  k = clip(floor(m), s_min, s_max) (AIF, u(0) = ½),
        clip(round_half_even(m), s_min, s_max) (AIFHalfEven, u(0) = 0), 1[m ≥ 1] (IF, u(0) = ½)

    and the network output's running mean at t is G_out(ā(t)). G is the ANN cut at
    its quantizers (their outputs become inputs, their inputs outputs), run in onnxruntime once per
    neuron per step, so that each neuron sees its upstream neurons' step-t averages.

    This is the semantics, not the compiled arithmetic: its float rounding differs (t·G(ā) − (t−1)·G(ā′)
    against per-step linear ops), so a comparison must tolerate rare level flips.
    """
    from pmsm_compiler.sessions import make_session

    cut = _cut_at_quantizers(ann, neurons)
    session = make_session(cut, opt_level, threads=1, qdq_fusion=False)
    input_name = ann.graph.input[0].name
    out_names = [o.name for o in session.get_outputs()]
    feed_names = {i.name for i in session.get_inputs()}
    first_output = ann.graph.output[0].name
    n = x.shape[0]
    sums = {q["output"]: None for q in neurons}  # float64 Σ a_j
    means = {}  # float32 ā_j(t) fed to G
    prev_g = {}  # G_j(ā(t − 1)), and the output's
    membranes = {}
    levels, outputs, mean_outputs, margins = [], [], [], []

    placeholders = _placeholders(ann, neurons, n)

    def run(current_means):
        # Neurons later in the network than the one being driven have no value yet at t = 1;
        # what they are fed cannot reach an earlier neuron's input.
        feeds = {input_name: x} if input_name in feed_names else {}
        for q in neurons:
            if q["output"] in feed_names:
                value = current_means.get(q["output"])
                feeds[q["output"]] = placeholders[q["output"]] if value is None else value
        return dict(zip(out_names, session.run(None, feeds)))

    for t in range(1, timesteps + 1):
        step_levels, step_margins = [], []
        for j, q in enumerate(neurons):
            if q["input"] == input_name:
                g = x
            elif q["input"] in sums and means.get(q["input"]) is not None:
                g = means[q["input"]]  # a quantizer reading another's output directly
            else:
                g = run(means)[q["input"]]
            g = np.asarray(g, np.float32)
            drive = g if t == 1 else np.float32(t) * g - np.float32(t - 1) * prev_g[j]
            prev_g[j] = g
            current = (drive / np.float32(q["theta_in"])).astype(np.float32)
            m = membranes.get(j, np.float32(INITIAL_MEMBRANES[q["op"]])) + current
            if q["op"] == "AIF":
                k = np.clip(np.floor(m), q["s_min"], q["s_max"]).astype(np.float32)
            elif q["op"] == "AIFHalfEven":
                k = np.clip(np.round(m), q["s_min"], q["s_max"]).astype(np.float32)  # numpy: ties to even
            elif q["op"] == "IF":
                k = (m >= 1).astype(np.float32)
            else:
                raise ValueError(f"unknown neuron op {q['op']!r}")
            step_margins.append(boundary_margin(q["op"], m, current, q["s_min"], q["s_max"]))
            membranes[j] = (m - k).astype(np.float32)
            a = k * np.float32(q["theta_out"])
            sums[q["output"]] = a.astype(np.float64) if sums[q["output"]] is None else sums[q["output"]] + a
            means[q["output"]] = (sums[q["output"]] / t).astype(np.float32)
            step_levels.append(k)
        out = run(means)[first_output]
        step = out if t == 1 else np.float32(t) * out - np.float32(t - 1) * prev_g["__output__"]
        prev_g["__output__"] = out
        levels.append(step_levels)
        margins.append(step_margins)
        outputs.append(np.asarray(step, np.float32))
        mean_outputs.append(np.asarray(out, np.float32))
    return RateCodedResult(levels, np.stack(outputs), np.stack(mean_outputs), margins)


def _placeholders(ann: onnx.ModelProto, neurons: list[dict], n: int) -> dict:
    """Zeros shaped like each quantizer's output (from the ANN's inferred shapes, batch = n)."""
    dims = {}
    for v in list(ann.graph.value_info) + list(ann.graph.output):
        dims[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    out = {}
    for q in neurons:
        shape = dims.get(q["output"])
        if shape is None or any(d is None for d in shape[1:]):
            raise ValueError(f"no static shape for quantizer output {q['output']!r} in the ANN")
        out[q["output"]] = np.zeros([n, *shape[1:]], np.float32)
    return out


def _cut_at_quantizers(ann: onnx.ModelProto, neurons: list[dict]) -> onnx.ModelProto:
    """The ANN without its quantizer nodes: their outputs become graph inputs, their inputs and
    the network outputs graph outputs."""
    from onnx import TensorProto, helper

    removed = {name for q in neurons for name in q["nodes"]}
    m = onnx.ModelProto()
    m.CopyFrom(ann)
    g = m.graph
    kept = [node for node in g.node if node.name not in removed]
    del g.node[:]
    g.node.extend(kept)
    produced = {o for node in kept for o in node.output} | {i.name for i in g.input}
    for q in neurons:
        if q["output"] not in produced:
            g.input.append(helper.make_tensor_value_info(q["output"], TensorProto.FLOAT, None))
            produced.add(q["output"])
    existing = {o.name for o in g.output}
    graph_inputs = {i.name for i in g.input}
    for q in neurons:
        if q["input"] not in existing and q["input"] not in graph_inputs:
            g.output.append(helper.make_tensor_value_info(q["input"], TensorProto.FLOAT, None))
            existing.add(q["input"])
    del g.value_info[:]
    return m


def quantizer_node_neurons(ann: onnx.ModelProto, info: dict) -> list[dict]:
    """``run_rate_coded_ann``'s neuron list for an ANN whose quantizers are ``pmsm::PQA`` /
    ``pmsm::QCFS`` nodes (as ``pmsm_compiler.training.export`` writes them), in network order, with the
    neuron parameters the compiler recorded for each (``info["layers"]``)."""
    producer = {o: node for node in ann.graph.node for o in node.output}
    found = {}
    for layer in info["layers"]:
        node = producer.get(layer["ann_output"])
        while node is not None and node.op_type == "Identity":  # the compiler drops an output Identity
            node = producer.get(node.input[0])
        if node is None or node.domain != "pmsm" or not node.name:
            raise ValueError(f"layer {layer['name']!r}: no named pmsm quantizer node produces {layer['ann_output']!r}")
        found[id(node)] = (node, layer)
    keys = ("op", "theta_in", "theta_out", "s_min", "s_max")
    return [{"input": node.input[0], "output": node.output[0], "nodes": [node.name],
             "layer_output": layer["ann_output"], **{k: layer[k] for k in keys}}
            for node, layer in (found[id(n)] for n in ann.graph.node if id(n) in found)]
