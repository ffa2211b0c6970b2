"""fuse_neuron_kernels: a neuron + its spike count become one fused kernel, bit for bit the same.

Tiny hand-built step graphs (the patterns ``pqa_to_aif`` and ``count_spikes`` emit): an AIF layer
with the float count chain (Flatten → Abs → ReduceSum), an IF layer with the int64 chain
(Flatten → Cast → Abs → ReduceSum), the last-step variant without the reset, and a constant
initial membrane. Each runs before and after the pass in onnxruntime; every output must be
identical. Also: what the pass must leave alone, and the kernel's own refusals.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pmsm_compiler import kernels
from pmsm_compiler.ops import DOMAIN, add_functions
from pmsm_compiler.ops.neurons import final_step_functions, neuron_functions
from pmsm_compiler.passes.fuse_neuron_kernels import KERNEL_DOMAIN, fuse_model

SHAPE = [3, 4, 5, 6]


@pytest.fixture(scope="module")
def library():
    status = kernels.status()
    if not status["available"]:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail(f"a C compiler is present but the fused kernels did not build: {status['reason']}")
        pytest.skip(f"fused kernels unavailable: {status['reason']}")
    return status["path"]


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
