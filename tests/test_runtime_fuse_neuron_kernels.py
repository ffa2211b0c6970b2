"""fuse_neuron_kernels: a neuron + its spike count become one fused kernel, bit for bit the same.

Tiny hand-built step graphs (the patterns ``pqa_to_aif`` and ``count_spikes`` emit): an AIF layer
with the float count chain (Flatten → Abs → ReduceSum), an IF layer with the int64 chain
(Flatten → Cast → Abs → ReduceSum), the last-step variant without the reset, and a constant
initial membrane. Each runs before and after the pass in onnxruntime; every output must be
identical. Also: what the pass must leave alone, and the kernel's own refusals.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pmsm_compiler.ops import DOMAIN, add_functions
from pmsm_compiler.ops.neurons import final_step_functions, neuron_functions
from pmsm_compiler.runtime.fuse_neuron_kernels import KERNEL_DOMAIN, fuse_model

SHAPE = [3, 4, 5, 6]


def _value(name, dtype=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _count_chain(prefix, spikes, int64=False, absolute=True):
    nodes = [helper.make_node("Flatten", [spikes], [f"{prefix}.flat"], axis=1)]
    cur = f"{prefix}.flat"
    if int64:
        nodes.append(helper.make_node("Cast", [cur], [f"{prefix}.int"], to=TensorProto.INT64))
        cur = f"{prefix}.int"
    if absolute:
        nodes.append(helper.make_node("Abs", [cur], [f"{prefix}.abs"]))
        cur = f"{prefix}.abs"
    nodes.append(helper.make_node("ReduceSum", [cur, "axis1"], [f"{prefix}.count"], keepdims=1))
    return nodes


def step_graph(final=False, scalar_membrane=False, int64_count=False, extra_outputs=(), flatten_axis=1,
               levels=(-2, 8)):
    """An AIF layer (s_min −2, s_max 8 unless ``levels``) and an IF layer, each with its count chain
    (float32, or int64 with ``int64_count``)."""
    aif, ifn = ("AIFFinal", "IFFinal") if final else ("AIF", "IF")
    outs_aif = ["k1"] if final else ["k1", "u1_next"]
    outs_if = ["k2"] if final else ["k2", "u2_next"]
    nodes = [helper.make_node(aif, ["i1", "u1"], outs_aif, domain=DOMAIN, s_min=levels[0], s_max=levels[1]),
             helper.make_node(ifn, ["i2", "u2"], outs_if, domain=DOMAIN)]
    nodes += _count_chain("l1", "k1", int64=int64_count)
    # IF spikes are non-negative: count_spikes emits no Abs on its float path
    nodes += _count_chain("l2", "k2", int64=True) if int64_count else _count_chain("l2", "k2", absolute=False)
    if flatten_axis != 1:
        nodes[2].attribute[0].i = flatten_axis
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    inputs = [_value("i1", shape=SHAPE), _value("i2", shape=SHAPE)]
    if scalar_membrane:
        inits += [helper.make_tensor("u1", TensorProto.FLOAT, [], [0.5]),
                  helper.make_tensor("u2", TensorProto.FLOAT, [], [0.5])]
    else:
        inputs += [_value("u1", shape=SHAPE), _value("u2", shape=SHAPE)]
    count_type = TensorProto.INT64 if int64_count else TensorProto.FLOAT
    outputs = [_value(n, shape=SHAPE) for n in outs_aif + outs_if]
    outputs += [_value("l1.count", count_type, [SHAPE[0], 1]), _value("l2.count", count_type, [SHAPE[0], 1])]
    outputs += [_value(n, shape=[SHAPE[0], int(np.prod(SHAPE[1:]))]) for n in extra_outputs]
    graph = helper.make_graph(nodes, "step", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, neuron_functions() + final_step_functions())
    return model


def feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        x = (rng.standard_normal(SHAPE) * 4).astype(np.float32)
        if inp.name.startswith("u"):
            x = rng.random(SHAPE).astype(np.float32)
        out[inp.name] = x
    # exact ties and clip bounds occur: integers and values far outside [s_min, s_max]
    out["i1"].reshape(-1)[:20] = np.arange(-10, 10, dtype=np.float32)
    return out


def run(model, inputs, library=None):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if library:
        so.register_custom_ops_library(library)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def ops(model):
    return [(n.domain, n.op_type) for n in model.graph.node]


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("scalar_membrane", [False, True])
@pytest.mark.parametrize("int64_count", [False, True])
def test_fuses_every_layer_and_changes_no_output(library, final, scalar_membrane, int64_count):
    model = step_graph(final=final, scalar_membrane=scalar_membrane, int64_count=int64_count)
    fused, n, notes = fuse_model(model)
    assert n == 2 and notes == []
    suffix = "Final" if final else ""
    assert ops(fused) == [(KERNEL_DOMAIN, f"AIFCount{suffix}"), (KERNEL_DOMAIN, f"IFCount{suffix}")]
    attrs = {a.name: a.i for a in fused.graph.node[0].attribute}
    assert attrs == {"s_min": -2, "s_max": 8, "count_float": 0 if int64_count else 1}
    assert {a.name: a.i for a in fused.graph.node[1].attribute} == {"count_float": 0 if int64_count else 1}
    inputs = feeds(model)
    before, after = run(model, inputs), run(fused, inputs, library)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype, name
        assert before[name].shape == after[name].shape, name
        assert np.array_equal(before[name], after[name]), name
    # the test data exercises both clip bounds, negative spikes and binary spikes
    assert before["k1"].min() == -2 and before["k1"].max() == 8 and set(np.unique(before["k2"])) == {0.0, 1.0}


def test_leaves_a_layer_whose_count_chain_is_read_elsewhere(library):
    model = step_graph(extra_outputs=("l1.abs",))  # an intermediate of the count is a graph output
    fused, n, notes = fuse_model(model)
    assert n == 1 and len(notes) == 1 and "l1.abs is read by more than the count" in notes[0]
    assert (DOMAIN, "AIF") in ops(fused) and (KERNEL_DOMAIN, "IFCount") in ops(fused)
    inputs = feeds(model, 1)
    before, after = run(model, inputs), run(fused, inputs, library)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_leaves_a_count_that_does_not_keep_the_batch_axis():
    model = step_graph(flatten_axis=2)
    fused, n, notes = fuse_model(model)
    assert n == 1 and "does not keep the batch axis" in notes[0]
    assert (DOMAIN, "AIF") in ops(fused)


@pytest.mark.parametrize("levels", [(-32768, 32767), (0, 65535), (-1025, 8)])
def test_leaves_levels_beyond_the_kernel_to_the_onnx_body(library, levels):
    """16-bit Q/DQ activations: the kernel would refuse to be created (below); the layer keeps its
    ONNX body, the other is fused, and the outputs are the same."""
    model = step_graph(levels=levels, int64_count=True)
    fused, n, notes = fuse_model(model)
    assert n == 1 and notes == [f": levels [{levels[0]}, {levels[1]}] beyond the fused kernel's ±1024"]
    assert (DOMAIN, "AIF") in ops(fused) and (KERNEL_DOMAIN, "IFCount") in ops(fused)
    inputs = feeds(model, 2)
    before, after = run(model, inputs), run(fused, inputs, library)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_kernel_refuses_spike_bounds_it_cannot_count_exactly(library):
    node = helper.make_node("AIFCount", ["i", "u"], ["k", "u_next", "c"], domain=KERNEL_DOMAIN, s_min=-2,
                            s_max=5000, count_float=0)
    graph = helper.make_graph([node], "g", [_value("i", shape=[2, 3]), _value("u", shape=[2, 3])],
                              [_value("k"), _value("u_next"), _value("c", TensorProto.INT64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(Exception, match="1024"):
        run(model, {"i": x, "u": x}, library)


def test_fused_graph_is_valid_onnx_apart_from_the_kernel_domain():
    fused, _, _ = fuse_model(step_graph())
    onnx.checker.check_model(fused)
    graph = gs.import_onnx(fused)
    assert all(n.op not in ("Flatten", "Abs", "ReduceSum", "Cast") for n in graph.nodes)


# ------------------------------------------------------------------------------------------------
# the *Counters kernels: the neuron, its count and every counting rule in one pass
# ------------------------------------------------------------------------------------------------

from pmsm_compiler.ops.counters import COUNTERS, counter_functions, spike_counters  # noqa: E402

# (op, s_min, s_max) of the three layers; IF counts with its range, 0 and 1
COUNTER_LAYERS = [("AIF", -2, 8), ("IF", 0, 1), ("AIFHalfEven", -3, 5)]


def counters_graph(final=False, scalar_membrane=False, int64=False, counter_bounds=None):
    """An AIF, an IF and an AIFHalfEven layer, each with its count chain and a ``SpikeCounters``
    (reading the spikes, or their int64 Cast with ``int64``) as ``count_spikes`` emits them."""
    nodes, inputs, outputs, inits = [], [], [], [helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    count_type = TensorProto.INT64 if int64 else TensorProto.FLOAT
    for j, (op, lo, hi) in enumerate(COUNTER_LAYERS, 1):
        k, u, i = f"k{j}", f"u{j}", f"i{j}"
        outs = [k] if final else [k, f"u{j}_next"]
        attrs = {} if op == "IF" else {"s_min": lo, "s_max": hi}
        nodes.append(helper.make_node(op + ("Final" if final else ""), [i, u], outs, domain=DOMAIN, **attrs))
        nodes += _count_chain(f"l{j}", k, int64=int64, absolute=lo < 0 or int64)
        source = k
        if int64:
            nodes.append(helper.make_node("Cast", [k], [f"{k}.int64"], to=TensorProto.INT64))
            source = f"{k}.int64"
        c_lo, c_hi = (counter_bounds or {}).get(j, (lo, hi))
        nodes.append(helper.make_node("SpikeCounters", [source], [f"l{j}.counters"], domain=DOMAIN, s_min=c_lo,
                                      s_max=c_hi))
        inputs.append(_value(i, shape=SHAPE))
        if scalar_membrane:
            inits.append(helper.make_tensor(u, TensorProto.FLOAT, [], [0.0 if op == "AIFHalfEven" else 0.5]))
        else:
            inputs.append(_value(u, shape=SHAPE))
        outputs += [_value(n, shape=SHAPE) for n in outs]
        outputs += [_value(f"l{j}.count", count_type, [SHAPE[0], 1]),
                    _value(f"l{j}.counters", TensorProto.INT64, [SHAPE[0], len(COUNTERS)])]
    graph = helper.make_graph(nodes, "step", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, neuron_functions() + final_step_functions() + counter_functions())
    return model


def counter_feeds(model, seed=0):
    inputs = feeds(model, seed)
    for name in ("i2", "i3"):  # exact ties (x.5 for the half-even neuron) and values beyond both caps
        inputs[name].reshape(-1)[:21] = np.arange(-10, 11, dtype=np.float32) / 2
    return inputs


@pytest.mark.parametrize("final", [False, True])
@pytest.mark.parametrize("scalar_membrane", [False, True])
@pytest.mark.parametrize("int64", [False, True])
def test_fuses_counters_and_changes_no_output(library, final, scalar_membrane, int64):
    model = counters_graph(final=final, scalar_membrane=scalar_membrane, int64=int64)
    fused, n, notes = fuse_model(model)
    assert n == 3 and notes == []
    suffix = "Final" if final else ""
    assert ops(fused) == [(KERNEL_DOMAIN, f"AIFCounters{suffix}"), (KERNEL_DOMAIN, f"IFCounters{suffix}"),
                          (KERNEL_DOMAIN, f"AIFHalfEvenCounters{suffix}")]
    inputs = counter_feeds(model)
    before, after = run(model, inputs), run(fused, inputs, library)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype and before[name].shape == after[name].shape, name
        assert np.array_equal(before[name], after[name]), name
    seen = np.zeros(len(COUNTERS), np.int64)
    for j, (_, lo, hi) in enumerate(COUNTER_LAYERS, 1):
        expected = spike_counters(before[f"k{j}"], lo, hi)
        assert np.array_equal(after[f"l{j}.counters"], expected), j
        assert np.array_equal(after[f"l{j}.counters"][:, 0], after[f"l{j}.count"][:, 0].astype(np.int64))
        seen += (expected > 0).any(axis=0)
    assert (seen > 0).all()  # every rule counted something


def test_counters_with_other_caps_are_left_alone(library):
    model = counters_graph(counter_bounds={1: (-1, 8)})  # counts k = −1 as "the lower cap": not the neuron's
    fused, n, notes = fuse_model(model)
    assert n == 3 and len(notes) == 1 and "counters not fused" in notes[0] and "(-1, 8)" in notes[0]
    assert (KERNEL_DOMAIN, "AIFCount") in ops(fused) and (DOMAIN, "SpikeCounters") in ops(fused)
    inputs = counter_feeds(model, 2)
    before, after = run(model, inputs), run(fused, inputs, library)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_large_layer_counts_exactly_across_blocks(library):
    """Over 2^21 neurons per sample: the kernel sums in int32 blocks of 2^20 and adds them in
    int64; spikes at the caps everywhere make every sum as large as it gets (beyond int32)."""
    shape = [2, (1 << 21) + 7]
    node = helper.make_node("AIFCountersFinal", ["i", "u"], ["k", "c", "cs"], domain=KERNEL_DOMAIN, s_min=-1024,
                            s_max=1024, count_float=0)
    graph = helper.make_graph([node], "g", [_value("i", shape=shape), _value("u", shape=[1])],
                              [_value("k", shape=shape), _value("c", TensorProto.INT64, [2, 1]),
                               _value("cs", TensorProto.INT64, [2, len(COUNTERS)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    x = np.full(shape, 5000.0, np.float32)
    x[1, ::2] = -5000.0
    out = run(model, {"i": x, "u": np.zeros(1, np.float32)}, library)
    assert np.array_equal(out["cs"], spike_counters(out["k"], -1024, 1024))
    assert out["cs"][0, 0] == 1024 * shape[1] > 2 ** 31  # beyond int32: the block sums were combined in int64
