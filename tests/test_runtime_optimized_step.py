"""The runtime's rewrite of onnxruntime's optimized step graph: absorbed neighbours and the blocked
layout change no result, bit for bit.

Two levels: hand-built graphs of one fused neuron with the stock Add / Mul / Div / Unsqueeze
around it, run before and after ``absorb_neighbours`` (every operand order and value pattern the
kernel must reproduce, ties and caps included); and whole SNNs (a ResNet with an identity residual
and 16/32 channels, a VGG with a stateful MaxPool, PQA and QCFS neurons, folded and exact mode),
run through ``SNNSession`` with and without the rewrite at T = 1..4 and several batch sizes: every output, spike count and counter identical.
"""

from __future__ import annotations


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pmsm_compiler.runtime.absorb_neighbours import absorb_neighbours
from pmsm_compiler.runtime.fuse_neuron_kernels import KERNEL_DOMAIN
from pmsm_compiler.runtime.optimized_step import nchwc_block

SHAPE = [3, 16, 5, 6]


def _value(name, dtype=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _scalar(name, value):
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def neighbour_graph(op="AIFCounters", residual="scaled", pre="div", post=True, swap=False, scalar_membrane=False,
                    counters_unsqueeze=True, residual_shape=None, shape=SHAPE):
    """x, r → [Add(x, Mul(r, s)) | Add(x, r)] → [Div(·, θ) | Mul(·, m)] → fused neuron → [Mul(k, θ)],
    with the counters through Unsqueeze(·, [1]) as the models' Concat reads them."""
    final = op.endswith("Final")
    nodes, inits = [], [_scalar("rs", 0.37), _scalar("theta", 0.3), _scalar("m", 1 / 3),
                        helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    cur = "x"
    if residual:
        r = "r"
        if residual == "scaled":
            nodes.append(helper.make_node("Mul", ["rs", "r"] if swap else ["r", "rs"], ["r_scaled"]))
            r = "r_scaled"
        nodes.append(helper.make_node("Add", [r, "x"] if swap else ["x", r], ["sum"]))
        cur = "sum"
    if pre == "div":
        nodes.append(helper.make_node("Div", [cur, "theta"], ["current"]))
        cur = "current"
    elif pre == "mul":
        nodes.append(helper.make_node("Mul", ["m", cur] if swap else [cur, "m"], ["current"]))
        cur = "current"
    outs = ["k"] + ([] if final else ["u_next"]) + ["count"] + (["counters"] if "Counters" in op else [])
    attrs = {"count_float": 1}
    if not op.startswith("IF"):
        attrs.update(s_min=-2, s_max=8)
    nodes.append(helper.make_node(op, [cur, "u"], outs, domain=KERNEL_DOMAIN, **attrs))
    outputs = ["count"] + ([] if final else ["u_next"])
    if post:
        nodes.append(helper.make_node("Mul", ["theta", "k"] if swap else ["k", "theta"], ["y"]))
        outputs.append("y")
    else:
        outputs.append("k")
    if "Counters" in op:
        if counters_unsqueeze:
            nodes.append(helper.make_node("Unsqueeze", ["counters", "axis1"], ["counters_row"]))
            outputs.append("counters_row")
        else:
            outputs.append("counters")
    inputs = [_value("x", shape=shape)]
    if residual:
        inputs.append(_value("r", shape=residual_shape or shape))
    if scalar_membrane:
        inits.append(_scalar("u", 0.5))
    else:
        inputs.append(_value("u", shape=shape))
    outputs = [_value(o, TensorProto.INT64 if o.startswith("counters") else TensorProto.FLOAT) for o in outputs]
    graph = helper.make_graph(nodes, "step", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    model.ir_version = 10
    return model


def neighbour_feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = (rng.standard_normal(shape) * 4).astype(np.float32)
    out["x"].reshape(-1)[:41] = np.arange(-10, 10.5, 0.5, dtype=np.float32)  # ties, caps, exact multiples of θ
    if "u" in out:
        out["u"] = rng.random(out["u"].shape).astype(np.float32)
    return out


def run(model, inputs, library, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = level
    so.register_custom_ops_library(library)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))


def shapes_of(model):
    """Static shapes as the runtime has them (it infers them before the kernels exist, through the
    neurons' function bodies): ONNX inference, and the kernel's spikes and Mul(k, θ) shaped like x."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
              if v.type.tensor_type.HasField("shape") and v.type.tensor_type.shape.dim}
    shapes["k"] = shapes["y"] = shapes["x"]
    return shapes


def absorbed(model):
    graph = gs.import_onnx(model)
    n = absorb_neighbours(graph, shapes_of(model))
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out, n


def test_shape_inference_sees_through_the_stock_neighbours():
    # the test's shape map (as the runtime's, made before the kernels exist) knows every operand
    shapes = shapes_of(neighbour_graph())
    assert shapes["r_scaled"] == shapes["sum"] == shapes["current"] == SHAPE


@pytest.mark.parametrize("op", ["AIFCounters", "AIFCountersFinal", "AIFCount", "IFCounters",
                                "AIFHalfEvenCounters"])
@pytest.mark.parametrize("residual,pre", [("scaled", None), ("plain", "div"), (None, "div"), (None, "mul"),
                                          ("scaled", "mul"), (None, None)])
@pytest.mark.parametrize("swap", [False, True])
def test_absorbed_neighbours_change_no_output(library, op, residual, pre, swap):
    model = neighbour_graph(op, residual=residual, pre=pre, swap=swap)
    inputs = neighbour_feeds(model)
    expected = run(model, inputs, library)
    rewritten, n = absorbed(model)
    stock = {node.op_type for node in rewritten.graph.node if node.domain != KERNEL_DOMAIN}
    assert stock == set(), f"left unabsorbed: {stock}"
    assert n == (2 if residual == "scaled" else 1 if residual else 0) + (1 if pre else 0) + 1 + ("Counters" in op)
    got = run(rewritten, inputs, library)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype and got[name].shape == expected[name].shape, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.parametrize("batch", [1, 2, 9])
def test_absorbed_neighbours_over_many_tiles_and_samples(library, batch):
    # 16 x 64 x 32 neurons per sample: 32 tiles of the kernel's current buffer each
    model = neighbour_graph("AIFCounters", residual="scaled", pre="div", scalar_membrane=batch % 2 == 1,
                            shape=[batch, 16, 64, 32])
    inputs = neighbour_feeds(model, seed=batch)
    expected = run(model, inputs, library)
    got = run(absorbed(model)[0], inputs, library)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    counts = expected["count"].reshape(-1)
    assert counts.shape == (batch,) and (counts > 0).all()


def test_a_broadcast_residual_is_left_to_the_stock_add(library):
    model = neighbour_graph(residual="plain", pre=None, residual_shape=[1, 16, 1, 1])
    rewritten, _ = absorbed(model)
    assert "Add" in {n.op_type for n in rewritten.graph.node}
    inputs = neighbour_feeds(model)
    expected, got = run(model, inputs, library), run(rewritten, inputs, library)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_neighbours_read_elsewhere_or_non_scalar_stay():
    model = neighbour_graph(residual="scaled", pre="div")
    model.graph.output.append(_value("current"))  # the neuron's current is also an output
    model.graph.initializer.append(helper.make_tensor("vec", TensorProto.FLOAT, [16, 1, 1], [2.0] * 16))
    for node in model.graph.node:
        if node.op_type == "Mul" and "rs" in node.input:
            node.input[list(node.input).index("rs")] = "vec"  # a per-channel scale: not a scalar
    rewritten, _ = absorbed(model)
    stock = [n.op_type for n in rewritten.graph.node if n.domain != KERNEL_DOMAIN]
    assert stock.count("Div") == 1 and stock.count("Add") == 1 and stock.count("Mul") == 1  # the Mul(k, θ) went in


def test_divisions_of_a_constant_by_the_tensor_stay():
    model = neighbour_graph(residual=None, pre="div")
    for node in model.graph.node:
        if node.op_type == "Div":
            node.input[:] = ["theta", "x"]
    rewritten, _ = absorbed(model)
    assert "Div" in {n.op_type for n in rewritten.graph.node}


def test_the_kernel_refuses_a_residual_of_another_shape(library):
    model = neighbour_graph(residual="plain", pre=None, post=False, counters_unsqueeze=False)
    graph = gs.import_onnx(model)
    neuron = next(n for n in graph.nodes if n.domain == KERNEL_DOMAIN)
    add = neuron.inputs[0].inputs[0]
    x, r = add.inputs
    add.outputs.clear()
    neuron.inputs[0] = x
    neuron.inputs.append(r)
    graph.cleanup()
    bad = gs.export_onnx(graph)
    bad.ir_version = 10
    inputs = neighbour_feeds(model)
    inputs["r"] = inputs["r"][:, :, :4]
    for i in bad.graph.input:
        if i.name == "r":
            i.type.tensor_type.shape.dim[2].dim_value = 4
    with pytest.raises(Exception, match="the residual must have the input's shape"):
        run(bad, inputs, library)


# --- whole SNNs through SNNSession ------------------------------------------------------------

def _export(net, path):
    import torch

    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.verify_export import randomize_for_check

    torch.manual_seed(0)
    randomize_for_check(net, torch.randn(16, 3, 16, 16), seed=0)
    export_onnx(net.eval(), str(path), input_shape=(1, 3, 16, 16))
    return str(path)


@pytest.fixture(scope="module")
def snn_models(tmp_path_factory):
    """Compiled SNNs: {(name, mode): model}."""
    pytest.importorskip("torch")
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.training.zoo.resnet import ResNetCifar
    from pmsm_compiler.training.zoo.vgg import VGG

    tmp = tmp_path_factory.mktemp("snn")
    nets = {
        # stem 16, an identity block at 16, a strided block to 32: residual Adds and conv-fused sums
        "resnet_pqa": ResNetCifar((1, 1, 1), (16, 16, 32), act="pqa"),
        "resnet_qcfs": ResNetCifar((1, 1, 1), (16, 16, 32), act="qcfs"),
        # a 4-channel layer keeps its reorders (the channel block is 8 or 16: padded); a stateful MaxPool
        "vgg_maxpool": VGG((16, 4, "M", 16, "M", 32, "M"), act="pqa", hidden=32, image_size=16),
    }
    out = {}
    for name, net in nets.items():
        ann = load_model(_export(net, tmp / f"{name}.onnx"))
        for mode in ("folded", "exact"):
            out[(name, mode)] = compile_model(ann, mode=mode).model
    return out


def _inputs(batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("name", ["resnet_pqa", "resnet_qcfs", "vgg_maxpool"])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_rewritten_steps_change_no_result(library, snn_models, name, mode):
    from pmsm_compiler.runtime import SNNSession

    model = snn_models[(name, mode)]
    plain = SNNSession(model, rewrite_optimized=False)
    rewritten = SNNSession(model)
    assert plain.step_rewrites == {"absorbed_ops": 0, "blocked_layers": 0}
    assert rewritten.step_rewrites["absorbed_ops"] > 0
    if nchwc_block() is not None:
        assert rewritten.step_rewrites["blocked_layers"] > 0
    for batch, steps in ((1, 3), (3, 1), (9, 2), (2, 4)):
        x = _inputs(batch, seed=batch)
        a = plain.run_batch(x, steps, keep_outputs=True, sample_counters=True)
        b = rewritten.run_batch(x, steps, keep_outputs=True, sample_counters=True)
        for field in ("mean_outputs", "predictions_by_t", "spikes", "outputs_by_t", "counters", "counters_by_sample"):
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=f"{field} b={batch} T={steps}")


def test_the_first_step_with_spikes_as_outputs_is_unchanged(library, snn_models):
    # what the verification compares with the ANN: the T = 1 step with every layer's spikes
    from pmsm_compiler.runtime import SNNSession

    model = snn_models[("resnet_pqa", "exact")]
    plain, rewritten = SNNSession(model, rewrite_optimized=False), SNNSession(model)
    names = tuple(layer.spike_tensor for layer in plain.layers)
    x = _inputs(4)
    a, b = plain.run_first_step(x, names), rewritten.run_first_step(x, names)
    assert a.keys() == b.keys() and set(names) <= set(a)
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_every_variant_keeps_the_middle_steps_membrane_layout(library, snn_models):
    from pmsm_compiler.runtime import SNNSession

    session = SNNSession(snn_models[("resnet_pqa", "folded")])
    decided = dict(session.blocked_states)
    for first, last in ((True, False), (False, True), (True, True)):
        session.session_for(first, last)
    assert session.blocked_states == decided
    if nchwc_block() is not None:
        assert decided and all(c % nchwc_block() == 0 for c in decided.values())


def test_off_the_cpu_kernels_or_below_level_all_nothing_is_rewritten(snn_models):
    from pmsm_compiler.runtime import SNNSession

    model = snn_models[("resnet_pqa", "folded")]
    assert SNNSession(model, kernels="off").step_rewrites == {"absorbed_ops": 0, "blocked_layers": 0}
    assert SNNSession(model, opt_level="extended").step_rewrites == {"absorbed_ops": 0, "blocked_layers": 0}


# --- blocked_layout on hand-built graphs in onnxruntime's NCHWc form --------------------------

def nchwc_graph(block, neuron_input_blocked=True, channels=None):
    """x → [ReorderInput → ReorderOutput] → fused neuron (state u) → ReorderInput → ReorderOutput → y:
    the shape onnxruntime gives a neuron between two NCHWc convolutions (the convolutions left out)."""
    channels = channels or block
    shape = [2, channels, 3, 2]
    nodes, cur = [], "x"
    if neuron_input_blocked:
        nodes += [helper.make_node("ReorderInput", ["x"], ["xb"], domain="com.microsoft.nchwc", channels_last=0),
                  helper.make_node("ReorderOutput", ["xb"], ["xn"], domain="com.microsoft.nchwc", channels=channels,
                                   channels_last=0)]
        cur = "xn"
    nodes += [helper.make_node("AIFCounters", [cur, "u"], ["k", "u_next", "count", "counters"], domain=KERNEL_DOMAIN,
                               s_min=-2, s_max=8, count_float=1),
              helper.make_node("ReorderInput", ["k"], ["kb"], domain="com.microsoft.nchwc", channels_last=0),
              helper.make_node("ReorderOutput", ["kb"], ["y"], domain="com.microsoft.nchwc", channels=channels,
                               channels_last=0)]
    graph = helper.make_graph(nodes, "step", [_value("x", shape=shape), _value("u", shape=shape)],
                              [_value("y"), _value("u_next"), _value("count"),
                               _value("counters", TensorProto.INT64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(KERNEL_DOMAIN, 1),
                                                    helper.make_opsetid("com.microsoft.nchwc", 1)])
    model.ir_version = 10
    return model, shape


def _to_blocked(a, block):
    n, c, h, w = a.shape
    return np.ascontiguousarray(a.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)).reshape(a.shape)


def _laid_out(model, block, required, shapes=None):
    from pmsm_compiler.runtime.blocked_layout import blocked_layout

    graph = gs.import_onnx(model)
    decisions, moved = blocked_layout(graph, block, [("u", "u_next")], required, shapes)
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out, decisions, moved


@pytest.fixture(scope="module")
def block():
    b = nchwc_block()
    if b is None:
        pytest.skip("onnxruntime has no NCHWc kernels here")
    assert b in (8, 16)
    return b


def test_the_middle_step_moves_a_neuron_between_reorders_and_stores_its_membrane_blocked(library, block):
    model, shape = nchwc_graph(block)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4
    u = np.random.default_rng(1).random(shape).astype(np.float32)
    expected = run(model, {"x": x, "u": u}, library)
    out, decisions, moved = _laid_out(model, block, None)
    assert (decisions, moved) == ({"u": block}, 1)
    # the reorders around the neuron are gone: x's into the layout and y's out of it remain
    assert [n.op_type for n in out.graph.node] == ["ReorderInput", "AIFCounters", "ReorderOutput"]
    got = run(out, {"x": x, "u": _to_blocked(u, block)}, library)
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_array_equal(got["u_next"], _to_blocked(expected["u_next"], block))
    for name in ("count", "counters"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_variants_follow_the_middle_steps_decisions(library, block):
    model, shape = nchwc_graph(block, neuron_input_blocked=False)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 4
    u = np.random.default_rng(3).random(shape).astype(np.float32)
    expected = run(model, {"x": x, "u": u}, library)
    # the middle step keeps it NCHW: so does this variant, though it could move it
    same, decisions, moved = _laid_out(model, block, {}, {"x": shape})
    assert (decisions, moved) == ({}, 0)
    # the middle step runs it blocked: this variant reorders its input in, and its membrane is blocked
    out, decisions, moved = _laid_out(model, block, {"u": block})
    assert (decisions, moved) == ({"u": block}, 1)
    got = run(out, {"x": x, "u": _to_blocked(u, block)}, library)
    np.testing.assert_array_equal(got["y"], expected["y"])
    np.testing.assert_array_equal(got["u_next"], _to_blocked(expected["u_next"], block))


def test_padded_channel_blocks_keep_their_reorders(library, block):
    model, _ = nchwc_graph(block, channels=block + 4)
    _, decisions, moved = _laid_out(model, block, None)
    assert (decisions, moved) == ({}, 0)


def test_static_shapes_read_no_weight_data(snn_models):
    # the runtime infers shapes on the graph with its large weights reduced to type and dims
    from pmsm_compiler.runtime.optimized_step import static_shapes

    model = snn_models[("resnet_pqa", "exact")]
    full = onnx.shape_inference.infer_shapes(model)
    expected = {v.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in v.type.tensor_type.shape.dim]
                for v in list(full.graph.value_info) + list(full.graph.input) + list(full.graph.output)
                if v.type.tensor_type.HasField("shape")}
    assert static_shapes(model) == expected
    assert any(init.ByteSize() > 4096 for init in model.graph.initializer)  # some weights were left out


def test_the_rewrite_leaves_no_files_behind(snn_models, tmp_path, monkeypatch):
    import tempfile

    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime import optimized_step

    monkeypatch.setattr(optimized_step, "_memory_folder", lambda model=None: str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    session = SNNSession(snn_models[("resnet_pqa", "folded")])
    session.run_batch(_inputs(2), 3)  # first, middle and last step sessions, all rewritten
    assert session.step_rewrites["absorbed_ops"] > 0
    assert list(tmp_path.iterdir()) == []


def test_the_rewrite_uses_dev_shm_only_with_room_for_the_weights(monkeypatch):
    """A container's /dev/shm is often 64 MiB: a step whose weights do not fit twice over goes to
    the default temporary folder, where onnxruntime's data file cannot fill a memory file system."""
    import os as os_module
    from types import SimpleNamespace

    from pmsm_compiler.runtime import optimized_step
    from pmsm_compiler.weights import weight_bytes
    from tiny_models import chain_model

    model = chain_model(3, channels=64)  # two 144 KiB convolutions, a 6.75 KiB one, the 2.5 KiB head
    need = weight_bytes(model)
    assert need == 4 * (64 * 3 * 9 + 2 * 64 * 64 * 9 + 10 * 64)
    monkeypatch.setattr(os_module.path, "isdir", lambda p: True)
    monkeypatch.setattr(os_module, "access", lambda p, mode: True)
    for free, expected in ((2 * need + (16 << 20), "/dev/shm"), (2 * need + (16 << 20) - 1, None)):
        monkeypatch.setattr(os_module, "statvfs", lambda p, free=free: SimpleNamespace(f_bavail=free, f_frsize=1))
        assert optimized_step._memory_folder(model) == expected


# --- lazy step sessions: one decider of the membranes' layout, whatever is built first ----------

_FIELDS = ("mean_outputs", "predictions_by_t", "spikes", "outputs_by_t", "counters", "counters_by_sample")


def _run(session, x, steps):
    return session.run_batch(x, steps, keep_outputs=True, sample_counters=True)


@pytest.mark.parametrize("name,mode", [("resnet_pqa", "folded"), ("resnet_qcfs", "exact"), ("vgg_maxpool", "exact")])
@pytest.mark.parametrize("order", [(1, 3, 2), (3, 1, 2), (2, 4, 1), (4, 2, 3)])
def test_variants_built_in_any_order_give_a_fresh_sessions_results(library, snn_models, name, mode, order):
    """The step sessions are built on first use, so which variant comes first depends on the runs
    (T = 1: first+last alone; T = 2: first and last; T >= 3: the middle too). The membranes' layout
    is the middle step's decision whatever came first: a variant that stored a state in another
    layout than the next step reads it in would change the results."""
    from pmsm_compiler.runtime import SNNSession

    model = snn_models[(name, mode)]
    x = _inputs(3, seed=7)
    reference = {}
    for steps in order:  # step by step: the variants are the step-by-step run's sessions
        fresh = SNNSession(model, time_batch=1)
        reference[steps] = (_run(fresh, x, steps), fresh.blocked_states)
    session = SNNSession(model, time_batch=1)
    for steps in order:
        got = _run(session, x, steps)
        for field in _FIELDS:
            np.testing.assert_array_equal(getattr(got, field), getattr(reference[steps][0], field),
                                          err_msg=f"{field} T={steps} after {order}")
    assert all(session.blocked_states == decided for _, decided in reference.values())


def test_a_one_step_run_builds_no_middle_step_and_a_two_step_run_asks_it_the_layout(library, snn_models):
    from pmsm_compiler.runtime import SNNSession

    model = snn_models[("resnet_pqa", "folded")]
    one = SNNSession(model)
    _run(one, _inputs(2), 1)
    assert list(one._variants) == [(True, True, ())]  # its one step reads and writes no state
    two = SNNSession(model)
    two.session_for(True, False)  # the first step writes the states: the middle step decides their layout
    assert list(two._variants) == [(False, False, ()), (True, False, ())]
    assert two.blocked_states == SNNSession(model).blocked_states
    if nchwc_block() is not None:
        assert two.blocked_states


@pytest.mark.parametrize("mode,built", [("folded", (True, True, ())), ("exact", (True, True, "ann_form"))])
def test_a_one_step_dataset_run_and_its_report_build_only_the_one_step(snn_models, mode, built):
    # what pmsm-run does at T = 1: the compatibility checks, the run and the kernels' report read
    # the model or the sessions that ran; none builds a middle step for its answer (exact mode:
    # the one step in the ANN's form)
    from pmsm_compiler.data import Dataset
    from pmsm_compiler.runtime import SNNSession, run_dataset

    session = SNNSession(snn_models[("resnet_pqa", mode)])
    rng = np.random.default_rng(0)
    data = Dataset(rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 6), name="random")
    report = run_dataset(session, data, 1, 3, [0.5] * 3, [0.25] * 3, progress=False)
    kernels = session.kernel_report()
    assert list(session._variants) == [built]
    assert report["samples"] == 6 and kernels["layers_fused"] == session.fused_layers
    assert session.output_dims(session.output_names[0])[1:] == [10]


def test_a_variant_that_disagreed_on_the_layout_would_change_the_results(library, snn_models):
    # what the order test above would catch: the first and last steps built as if no membrane were
    # blocked, the middle step reading and writing them blocked
    from pmsm_compiler.runtime import SNNSession

    if nchwc_block() is None:
        pytest.skip("no NCHWc kernels: no membrane is blocked")
    model = snn_models[("resnet_pqa", "folded")]
    x = _inputs(3, seed=7)
    expected = _run(SNNSession(model, time_batch=1), x, 3)  # step by step: three variants
    wrong = SNNSession(model, time_batch=1)
    assert wrong.blocked_states
    wrong._blocked_states = {}
    got = _run(wrong, x, 3)
    assert not all(np.array_equal(getattr(got, f), getattr(expected, f)) for f in ("mean_outputs", "spikes"))


@pytest.mark.parametrize("first,last", [(False, False), (True, False), (False, True), (True, True)])
def test_variant_shapes_from_the_skeleton_are_the_full_variants(snn_models, first, last):
    # the shapes absorb_neighbours and blocked_layout read, inferred without the weights' data,
    # against those of the same variant of the step with its weights
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime.optimized_step import static_shapes
    from pmsm_compiler.runtime.step_graphs import split_static_prologue, step_variant

    for key in (("resnet_pqa", "exact"), ("vgg_maxpool", "folded")):
        session = SNNSession(snn_models[key], kernels="off")
        _, whole_step = split_static_prologue(snn_models[key], session.info)
        assert any(t.HasField("raw_data") and len(t.dims) == 4 for t in whole_step.graph.initializer)
        full = static_shapes(step_variant(whole_step, session.info, first, last))
        light = session._variant_shapes(first, last)
        weights = {t.name for t in session._step_model.graph.initializer}
        assert full and {k: v for k, v in light.items() if k in full} == full
        assert set(light) - set(full) <= weights


def _structure(model):
    """The nodes of ``model`` as a sorted list, onnxruntime's generated tensor names (``*token*``)
    replaced by what computes them: equal for isomorphic graphs whatever their names and order."""
    import hashlib

    producer = {o: (n, i) for n in model.graph.node for i, o in enumerate(n.output)}
    memo = {}

    def name(t):
        if "token" not in t or t not in producer:
            return t
        if t not in memo:
            n, i = producer[t]
            signature = repr((n.op_type, n.domain, [a.SerializeToString() for a in n.attribute],
                              [name(x) for x in n.input], i))
            memo[t] = hashlib.sha1(signature.encode()).hexdigest()
        return memo[t]

    return sorted(repr((n.op_type, n.domain, [a.SerializeToString() for a in n.attribute], [name(x) for x in n.input],
                        [name(x) for x in n.output])) for n in model.graph.node)


def test_the_optimizer_writes_the_graph_a_running_session_optimizes(library, snn_models, tmp_path):
    # write_optimized_model skips the prepacked weights: onnxruntime prepacks after it writes the graph
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session, write_optimized_model

    session = SNNSession(snn_models[("resnet_qcfs", "exact")])
    options = dict(qdq_fusion=False, priority_order=True, custom_ops_library=session.kernels,
                   initializers=session._weights)  # the variants are cut from the weight-free skeleton
    for first, last in ((False, False), (True, False), (True, True)):
        data = session._variant_model(first, last, ())
        running, alone = (tmp_path / f"{kind}{first}{last}" / "step.onnx" for kind in ("running", "alone"))
        running.parent.mkdir(), alone.parent.mkdir()  # one name: the weights' data file is named after it
        make_session(data, "all", optimized_model_path=str(running), **options)
        write_optimized_model(data, str(alone), "all", **options)
        a, b = onnx.load(running, load_external_data=False), onnx.load(alone, load_external_data=False)
        assert _structure(a) == _structure(b) and len(a.graph.node) > 0
        assert sorted(i.SerializeToString() for i in a.graph.initializer) == \
            sorted(i.SerializeToString() for i in b.graph.initializer)
