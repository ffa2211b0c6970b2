"""wrap_nonlinear: non-linear ops on spiking input become stateful temporal wrappers.

Rate coding needs (1/t)·Σ_{τ≤t} out_τ = f(x̄_t) at every t. Checked over T = 1..6 steps with the
state carried, against the numpy reference ``pmsm_compiler.ops.temporal.TemporalWrapper`` (same
float operations: exact) and against the direct definition (folded mode: integer spike traffic,
so the sums are exact and the identity holds exactly; exact mode: float sums, within 1e-5
relative); at T = 1 the wrapper is f itself, bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.onnx_utils import with_outputs
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.ops.temporal import TemporalWrapper
from pmsm_compiler.passes import TIME_INPUT, PassContext, PassRefusal, wrap_nonlinear
from pmsm_compiler.passes.wrap_nonlinear import dynamic_tensors
from pmsm_compiler.sessions import make_session
from pmsm_compiler.snn_format import State
from pmsm_compiler.verify import initial_state_feeds

STEPS = 6
FLOAT_RTOL = 1e-5
OPSET = 20


def maxpool2(x):
    """MaxPool kernel 2, stride 2 on NCHW (even H, W)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def softmax1(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run_steps(compiled, feeds, extra, steps=STEPS, opt_level="all"):
    """Run ``steps`` timesteps carrying every state; yield the outputs (and ``extra`` tensors) of each."""
    info = compiled.info
    sess = make_session(with_outputs(compiled.model, extra), opt_level, threads=1)
    names = [o.name for o in sess.get_outputs()]
    states = initial_state_feeds(info, sess)
    for t in range(1, steps + 1):
        step_feeds = {**feeds, **states}
        if info["time_input"]:
            step_feeds[info["time_input"]] = np.array([t], np.float32)
        out = dict(zip(names, sess.run(None, step_feeds)))
        states = {s["input"]: out[s["output"]] for s in info["states"]}
        yield out


def wrapper_io(model, wrapper):
    """(time-varying input, output) tensor names of a wrapper, from its accumulate/difference nodes."""
    label = wrapper["name"]
    acc = next(n for n in model.graph.node if n.name == f"{label}/accumulate0")
    diff = next(n for n in model.graph.node if n.name == f"{label}/difference")
    return acc.input[1], diff.output[0]


# ------------------------------------------------------------------------------------------
# MaxPool between neurons: vgg_tiny with pool="M"
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg_maxpool(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.training.zoo import build_model

    torch.manual_seed(1)
    net = build_model("vgg_tiny", act="pqa", pool="M")
    rng = np.random.default_rng(2)
    for _, m in quantized_activations(net):
        m.lam.data.fill_(float(rng.uniform(1, 4)))
    path = tmp_path_factory.mktemp("vgg") / "vgg_tiny_max.onnx"
    export_onnx(net, str(path), exporter="legacy", pqa_as="plain")
    ann = load_model(path)
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    return ann, x


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_maxpool_between_neurons_wrapped_homogeneous(vgg_maxpool, mode):
    ann, _ = vgg_maxpool
    compiled = compile_model(ann, mode=mode)
    info = compiled.info
    wrappers = info["wrappers"]
    assert len(wrappers) == 3 and all(w["op"] == "MaxPool" and w["homogeneous"] for w in wrappers)
    assert info["time_input"] is None and TIME_INPUT not in [i.name for i in compiled.model.graph.input]
    wrapper_states = [s for s in info["states"] if "wrapper" in s]
    assert len(wrapper_states) == 6 and all(s["init"] == 0.0 for s in wrapper_states)


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_maxpool_wrapper_time_average(vgg_maxpool, mode):
    ann, x = vgg_maxpool
    compiled = compile_model(ann, mode=mode)
    ios = [wrapper_io(compiled.model, w) for w in compiled.info["wrappers"]]
    refs = [TemporalWrapper(maxpool2, homogeneous=True) for _ in ios]
    sums_in = [0.0] * len(ios)
    sums_out = [0.0] * len(ios)
    extra = [name for io in ios for name in io]
    for t, out in enumerate(run_steps(compiled, {"input": x}, extra), start=1):
        for j, ((xin, xout), ref) in enumerate(zip(ios, refs)):
            x_t, o_t = out[xin], out[xout]
            # the numpy reference performs the same float operations: equal bit for bit
            np.testing.assert_array_equal(o_t, ref.step(x_t))
            if t == 1:
                np.testing.assert_array_equal(o_t, maxpool2(x_t))  # T = 1: MaxPool itself
            sums_in[j] = sums_in[j] + x_t.astype(np.float64)
            sums_out[j] = sums_out[j] + o_t.astype(np.float64)
            mean_out, pool_of_mean = sums_out[j] / t, maxpool2(sums_in[j] / t)
            if mode == "folded":
                assert np.array_equal(x_t, np.round(x_t))  # integer spike counts in
                np.testing.assert_array_equal(mean_out, pool_of_mean)  # exact sums of integers
            else:
                np.testing.assert_allclose(mean_out, pool_of_mean, rtol=FLOAT_RTOL,
                                           atol=FLOAT_RTOL * float(np.abs(pool_of_mean).max()))
        assert t <= STEPS
    assert t == STEPS


def test_maxpool_exact_mode_t1_equals_ann(vgg_maxpool):
    ann, x = vgg_maxpool
    compiled = compile_model(ann, mode="exact")
    y_ann = make_session(ann, "all", threads=1).run(["logits"], {"input": x})[0]
    first = next(run_steps(compiled, {"input": x}, [], steps=1))
    assert np.array_equal(first["logits"], y_ann)


# ------------------------------------------------------------------------------------------
# hand-built graphs: Softmax (general form), an unsupported op, a MaxPool on the static path
# ------------------------------------------------------------------------------------------

def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def small(after_nodes, out_name, out_shape, before_nodes=(), conv_in="x", hw=4, extra_inits=(),
          out_type=TensorProto.FLOAT):
    """x → [before] → Conv → PQA (λ=2.3, L=4, levels −1..4) → [after] → out."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2 * hw, 2 * hw])
    y = helper.make_tensor_value_info(out_name, out_type, ["N", *out_shape])
    nodes = [*before_nodes,
             helper.make_node("Conv", [conv_in, "W"], ["c"], name="conv", strides=[2, 2], kernel_shape=[2, 2]),
             helper.make_node("PQA", ["c", "lam"], ["a"], name="act", domain="pmsm", L=4, alpha=-0.25, beta=1.0),
             *after_nodes]
    inits = [_f("W", rng.standard_normal((4, 3, 2, 2))), _f("lam", 2.3), *extra_inits]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_softmax_after_neuron_general_form(mode):
    ann = small([helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=1)], "y", (4, 4, 4))
    compiled = compile_model(ann, mode=mode)
    (wrapper,) = compiled.info["wrappers"]
    assert wrapper["op"] == "Softmax" and not wrapper["homogeneous"]
    assert compiled.info["time_input"] == TIME_INPUT
    (t_in,) = [i for i in compiled.model.graph.input if i.name == TIME_INPUT]
    assert t_in.type.tensor_type.elem_type == TensorProto.FLOAT
    assert [d.dim_value for d in t_in.type.tensor_type.shape.dim] == [1]
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32) * 2
    xin, xout = wrapper_io(compiled.model, wrapper)
    ref = TemporalWrapper(softmax1)
    total_in, total_out = 0.0, 0.0
    for t, out in enumerate(run_steps(compiled, {"x": x}, [xin]), start=1):
        o_t, x_t = out[xout], out[xin]
        np.testing.assert_allclose(o_t, ref.step(x_t), rtol=FLOAT_RTOL, atol=1e-6)
        total_in, total_out = total_in + x_t.astype(np.float64), total_out + o_t.astype(np.float64)
        np.testing.assert_allclose(total_out / t, softmax1(total_in / t), rtol=FLOAT_RTOL, atol=1e-6)
        if t == 1 and mode == "exact":  # ÷1, ×1, −0: the ANN's Softmax bit for bit
            y_ann = make_session(ann, "all", threads=1).run(["y"], {"x": x})[0]
            assert np.array_equal(o_t, y_ann)
    assert t == STEPS


def test_unsupported_nonlinear_op_refused():
    ann = small([helper.make_node("Sin", ["a"], ["y"], name="sine")], "y", (4, 4, 4))
    with pytest.raises(UnsupportedModelError) as info:
        compile_model(ann, mode="exact")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Sin 'sine' is non-linear in spiking input and has no temporal wrapper")
    assert "supported:" in message and "MaxPool" in message and "Softmax" in message


def test_maxpool_on_static_input_path_not_wrapped():
    ann = small([helper.make_node("GlobalAveragePool", ["a"], ["y"], name="gap")], "y", (4, 1, 1),
                before_nodes=[helper.make_node("MaxPool", ["x"], ["xp"], name="inpool", kernel_shape=[2, 2],
                                               strides=[2, 2])], conv_in="xp", hw=8)
    for mode in ("folded", "exact"):
        compiled = compile_model(ann, mode=mode)
        assert compiled.info["wrappers"] == [] and compiled.info["time_input"] is None
        assert [s["kind"] for s in compiled.info["states"]] == ["membrane"]
        pool = next(n for n in compiled.model.graph.node if n.op_type == "MaxPool")
        assert pool.input == ["x"]  # reads the network input directly, no running sum


def test_relu_after_neuron_is_wrapped_homogeneous():
    ann = small([helper.make_node("Relu", ["a"], ["y"], name="relu")], "y", (4, 4, 4))
    compiled = compile_model(ann, mode="folded")
    (wrapper,) = compiled.info["wrappers"]
    assert wrapper["op"] == "Relu" and wrapper["homogeneous"] and compiled.info["time_input"] is None
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32) * 2
    xin, xout = wrapper_io(compiled.model, wrapper)
    theta = np.float32(2.3) / np.float32(4)
    total_in = total_out = 0.0
    for out in run_steps(compiled, {"x": x}, [xin, xout]):
        assert np.array_equal(out[xin], np.round(out[xin]))  # integer spike counts in
        total_in, total_out = total_in + out[xin], total_out + out[xout]
        np.testing.assert_array_equal(total_out, np.maximum(total_in, 0))  # exact: integers
        np.testing.assert_array_equal(out["y"], out[xout] * theta)  # the graph output in real units


# ------------------------------------------------------------------------------------------
# Shape-only chains: x.view(x.size(0), -1) reads the shape of the spikes, never their values
# ------------------------------------------------------------------------------------------

THETA_SMALL = float(np.float32(2.3) / np.float32(4))
VIEW_INITS = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
              numpy_helper.from_array(np.array([0], np.int64), "axes0"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
SHAPE_CHAIN = {"shape", "n", "n1", "new_shape"}


def view_nodes(src="a", out="y"):
    """Shape → Gather(0) → Unsqueeze → Concat(·, [−1]) → Reshape: how the legacy exporter writes
    x.view(x.size(0), −1)."""
    return [helper.make_node("Shape", [src], ["shape"], name="shape"),
            helper.make_node("Gather", ["shape", "zero"], ["n"], name="batch_dim", axis=0),
            helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
            helper.make_node("Concat", ["n1", "minus_one"], ["new_shape"], name="concat", axis=0),
            helper.make_node("Reshape", [src, "new_shape"], [out], name="view")]


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_shape_chain_is_static_and_not_wrapped(mode):
    ann = small(view_nodes(), "y", (64,), extra_inits=VIEW_INITS)
    compiled = compile_model(ann, mode=mode)
    info = compiled.info
    assert info["wrappers"] == [] and info["time_input"] is None
    assert [s["kind"] for s in info["states"]] == ["membrane"]
    graph = gs.import_onnx(compiled.model)
    assert "Shape" in [n.op for n in graph.nodes]  # a dynamic batch: the chain stays, read at run time
    dynamic = dynamic_tensors(graph, {s["input"] for s in info["states"]})
    assert SHAPE_CHAIN.isdisjoint(dynamic) and "y" in dynamic
    x = np.random.default_rng(6).standard_normal((3, 3, 8, 8)).astype(np.float32) * 2
    y_ann = make_session(ann, "all", threads=1).run(["y"], {"x": x})[0]
    spikes = info["layers"][0]["spike_tensor"]
    for t, out in enumerate(run_steps(compiled, {"x": x}, [spikes]), start=1):
        if t == 1:
            assert np.array_equal(out["y"], y_ann)  # a reshape of k·θ: nothing to re-associate
        np.testing.assert_array_equal(out["y"], (out[spikes] * np.float32(THETA_SMALL)).reshape(3, -1))


def test_dynamic_tensors_skip_shape_and_size():
    """Shape and Size of a time-varying tensor are the same at every step."""
    graph = gs.Graph(inputs=[gs.Variable("u", np.float32, ["N", 4])])
    u = graph.inputs[0]
    shape, size, doubled = (gs.Variable(n, np.int64) for n in ("shape", "size", "doubled"))
    y = gs.Variable("y", np.float32, ["N", 4])
    graph.nodes += [gs.Node("Shape", inputs=[u], outputs=[shape]), gs.Node("Size", inputs=[u], outputs=[size]),
                    gs.Node("Add", inputs=[shape, shape], outputs=[doubled]),
                    gs.Node("Reshape", inputs=[u, doubled], outputs=[y])]
    assert dynamic_tensors(graph, {"u"}) == {"u", "y"}


def _one_state_graph(op, state_dtype, state_shape, inputs, attrs=None):
    """A graph whose time-varying tensor is the state input itself, feeding ``op``."""
    state = gs.Variable("state", state_dtype, state_shape)
    x = gs.Variable("x", np.float32, [2, 3])
    y = gs.Variable("y", np.float32, None)
    tensors = {"state": state, "x": x}
    node_inputs = [tensors.get(i, i) if isinstance(i, str) else i for i in inputs]
    graph = gs.Graph(nodes=[gs.Node(op, name="op", attrs=attrs or {}, inputs=node_inputs, outputs=[y])],
                     inputs=[x, state], outputs=[y])
    ctx = PassContext(mode="exact")
    ctx.states.append(State("state", "state_next", 0.0, "membrane"))
    return graph, ctx


@pytest.mark.parametrize("op, dtype, shape, inputs, position", [
    ("Gather", np.int64, [2], [gs.Constant("table", np.ones((5, 3), np.float32)), "state"], 1),
    ("Where", np.bool_, [2, 3], ["state", "x", gs.Constant("c", np.zeros(3, np.float32))], 0),
    ("Reshape", np.int64, [2], ["x", "state"], 1),
    ("Expand", np.int64, [2], ["x", "state"], 1),
])
def test_time_varying_operand_outside_the_linear_inputs_refused(op, dtype, shape, inputs, position):
    """Indices, a condition or a shape that change over time make the op non-linear: refused, with the
    reason, although the op is linear (and unwrapped) in its other inputs."""
    graph, ctx = _one_state_graph(op, dtype, shape, inputs)
    with pytest.raises(PassRefusal) as info:
        wrap_nonlinear(graph, ctx)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{op} 'op' is not linear in its time-varying input {position} ('state'")
    assert message.endswith("and has no temporal wrapper")


def test_pad_with_time_varying_fill_value_is_linear():
    """Pad is affine in its fill value too: a time-varying one needs no wrapper."""
    graph, ctx = _one_state_graph("Pad", np.float32, [], ["x", gs.Constant("pads", np.array([0, 1, 0, 1])), "state"])
    wrap_nonlinear(graph, ctx)
    assert ctx.wrappers == []


# ------------------------------------------------------------------------------------------
# End to end: a PyTorch model with x.view(x.size(0), ...) exported by the legacy exporter
# ------------------------------------------------------------------------------------------

VIEW_BATCH = 4


@pytest.fixture(scope="module")
def view_models(tmp_path_factory):
    """(dynamic-batch ANN, fixed-batch ANN, θ, net): conv → PQA → view(n, −1) → fc."""
    torch = pytest.importorskip("torch")
    from pmsm_compiler.training.activations import PQA
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.loading import load_model

    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(8)
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.act = PQA(levels=8)
            self.fc = torch.nn.Linear(4 * 6 * 6, 5)
            with torch.no_grad():
                for p in (self.conv.weight, self.conv.bias, self.fc.weight, self.fc.bias):
                    p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.5))
                self.act.lam.fill_(3.3)

        def forward(self, x):
            a = self.act(self.conv(x))
            return self.fc(a.view(a.size(0), -1))

    net = ViewNet()
    path = tmp_path_factory.mktemp("view") / "view.onnx"
    export_onnx(net, str(path), input_shape=(2, 3, 6, 6), exporter="legacy", pqa_as="plain")
    dynamic = load_model(path)
    assert {"Shape", "Gather", "Concat", "Reshape"} <= {n.op_type for n in dynamic.graph.node}
    fixed = onnx.ModelProto()
    fixed.CopyFrom(dynamic)  # the same graph with the batch pinned, as a fixed-batch export declares it
    for value in (fixed.graph.input[0], fixed.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = VIEW_BATCH
    fixed_path = path.with_name("view_fixed.onnx")
    onnx.save(fixed, fixed_path)
    lam = float(net.act.lam.detach())
    return dynamic, load_model(fixed_path), float(np.float32(lam) / np.float32(8)), net


@pytest.mark.parametrize("batch", ["dynamic", "fixed"])
@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_view_model_compiles_and_runs(view_models, mode, batch):
    from pmsm_compiler.runtime import SNNSession

    dynamic, fixed, theta, net = view_models
    ann = dynamic if batch == "dynamic" else fixed
    compiled = compile_model(ann, mode=mode)
    assert compiled.info["wrappers"] == [] and compiled.info["time_input"] is None
    session = SNNSession(compiled.model)
    w = net.fc.weight.detach().numpy().astype(np.float64)
    b = net.fc.bias.detach().numpy().astype(np.float64)
    spikes = compiled.info["layers"][0]["spike_tensor"]
    for n in ([VIEW_BATCH] if batch == "fixed" else [3, 5]):
        x = np.random.default_rng(n).standard_normal((n, 3, 6, 6)).astype(np.float32) * 2
        y_ann = make_session(ann, "all").run(None, {"input": x})[0]
        first = session.run_batch(x, 1).mean_outputs
        if mode == "exact":
            assert np.array_equal(first, y_ann)
        else:  # θ folded into the conv: re-associated float sums, no level flip on these inputs
            assert float(np.abs(first - y_ann).max()) <= 1e-5 * float(np.abs(y_ann).max())
        # T = 4: the tail after the neuron is linear, so the mean logits are fc(θ·k̄), with k̄ from a
        # plain loop over the one-step model
        result = session.run_batch(x, 4)
        k_sum = sum(out[spikes].astype(np.float64) for out in run_steps(compiled, {"input": x}, [spikes], steps=4))
        expected = (k_sum / 4 * np.float32(theta)).reshape(n, -1) @ w.T + b
        np.testing.assert_allclose(result.mean_outputs, expected, rtol=0,
                                   atol=1e-5 * float(np.abs(expected).max()))


def test_float_identity_casts_pass_spikes_and_other_casts_are_refused():
    """Cast(to float32) and CastLike(float32) of float32 spikes are the identity: linear, not
    wrapped; a Cast to float16 rounds: refused with the reason."""
    def build(cast_nodes, last):
        inits = [numpy_helper.from_array(np.ones((6, 8), np.float32), "W1"),
                 numpy_helper.from_array(np.array(3.0, np.float32), "lam"),
                 numpy_helper.from_array(np.ones((8, 5), np.float32), "W2"),
                 numpy_helper.from_array(np.array(1.0, np.float32), "one")]
        nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
                 helper.make_node("PQA", ["h", "lam"], ["q"], domain="pmsm", L=8, alpha=-0.25, beta=1.0, name="act"),
                 *cast_nodes, helper.make_node("MatMul", [last, "W2"], ["y"], name="fc2")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
        add_functions(m, quantizer_functions())
        return onnx.shape_inference.infer_shapes(m, strict_mode=True)

    identity = build([helper.make_node("Cast", ["q"], ["c"], to=TensorProto.FLOAT, name="cast"),
                      helper.make_node("CastLike", ["c", "one"], ["d"], name="cast_like")], "d")
    for mode in ("folded", "exact"):
        assert compile_model(identity, mode=mode).info["wrappers"] == []
    half = build([helper.make_node("Cast", ["q"], ["c"], to=TensorProto.FLOAT16, name="to_half"),
                  helper.make_node("Cast", ["c"], ["d"], to=TensorProto.FLOAT, name="back")], "d")
    with pytest.raises(UnsupportedModelError, match="to_half"):
        compile_model(half, mode="exact")


def _hand_written_leaky_relu(cast_too: bool = False):
    """Where(a > 0, a, 0.1·a), a leaky ReLU as research code writes it (torch.where), and with
    ``cast_too`` also its mask as numbers (a·(a > 0) form): two readers of one comparison."""
    nodes = [helper.make_node("Greater", ["a", "zero"], ["m"], name="gt"),
             helper.make_node("Mul", ["a", "slope"], ["sa"], name="scaled"),
             helper.make_node("Where", ["m", "a", "sa"], ["w"], name="where")]
    if cast_too:
        nodes += [helper.make_node("Cast", ["m"], ["mf"], name="mask", to=TensorProto.FLOAT),
                  helper.make_node("Add", ["w", "mf"], ["y"], name="add")]
    else:
        nodes.append(helper.make_node("Identity", ["w"], ["y"], name="out"))
    return small(nodes, "y", (4, 4, 4), extra_inits=[_f("zero", 0.0), _f("slope", 0.1)])


@pytest.mark.parametrize("mode", ["folded", "exact"])
def test_a_comparison_of_spikes_and_its_readers_become_wrapped_functions(mode):
    """A comparison on spike traffic (boolean, which no wrapper averages) goes with each reader (a
    Where that selects by it, a Cast of it) into one model-local function of numbers
    (``ops.temporal.REGION_DOMAIN``), wrapped in the general form: the running mean of its output
    is f of the running mean of its inputs at every step; at T = 1 exact mode is the ANN bit for bit."""
    from pmsm_compiler.ops.temporal import REGION_DOMAIN

    ann = _hand_written_leaky_relu(cast_too=True)
    compiled = compile_model(ann, mode=mode)
    wrappers = compiled.info["wrappers"]
    assert [w["op"] for w in wrappers] == ["Greater_Where", "Greater_Cast"]
    assert all(not w["homogeneous"] for w in wrappers) and compiled.info["time_input"] == TIME_INPUT
    functions = {f.name: f for f in compiled.model.functions if f.domain == REGION_DOMAIN}
    assert {n: [b.op_type for b in f.node] for n, f in functions.items()} == {
        "Greater_Where": ["Greater", "Where"], "Greater_Cast": ["Greater", "Cast"]}
    assert (REGION_DOMAIN, 1) in {(o.domain, o.version) for o in compiled.model.opset_import}
    assert not {"Greater", "Where"} & {n.op_type for n in compiled.model.graph.node}
    assert [w["dense_ops"] for w in wrappers] == [2 * 64, 2 * 64]  # compare, select: per element of [4, 4, 4]
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32) * 2
    where_in, where_out = wrapper_io(compiled.model, wrappers[0])
    total_in, total_out = 0.0, 0.0
    for t, out in enumerate(run_steps(compiled, {"x": x}, [where_in, where_out]), start=1):
        total_in = total_in + out[where_in].astype(np.float64)
        total_out = total_out + out[where_out].astype(np.float64)
        mean = total_in / t
        np.testing.assert_allclose(total_out / t, np.where(mean > 0, mean, 0.1 * mean), rtol=FLOAT_RTOL, atol=1e-6)
        if t == 1 and mode == "exact":
            y_ann = make_session(ann, "all", threads=1).run(["y"], {"x": x})[0]
            assert np.array_equal(out["y"], y_ann)
    assert t == STEPS


def test_a_comparison_read_otherwise_is_refused_with_the_reason():
    """Only a Where that selects by the mask or a Cast of it to float: a comparison whose output is
    a graph output, a Where that selects masks by it, a Cast of it to an integer is refused."""
    as_output = small([helper.make_node("Greater", ["a", "zero"], ["y"], name="gt")], "y", (4, 4, 4),
                      extra_inits=[_f("zero", 0.0)], out_type=TensorProto.BOOL)
    with pytest.raises(UnsupportedModelError, match="Greater 'gt' on spike traffic: its boolean output is a graph "
                                                    "output"):
        compile_model(as_output, mode="exact")
    as_value = small([helper.make_node("Less", ["a", "zero"], ["m"], name="lt"),
                      helper.make_node("Where", ["m", "m", "m"], ["b"], name="where"),
                      helper.make_node("Cast", ["b"], ["y"], name="cast", to=TensorProto.FLOAT)], "y", (4, 4, 4),
                     extra_inits=[_f("zero", 0.0)])
    with pytest.raises(UnsupportedModelError, match="Where 'where' selects bool by a mask of spikes; a wrapped "
                                                    "function must give float32"):
        compile_model(as_value, mode="folded")
    to_int = small([helper.make_node("Greater", ["a", "zero"], ["m"], name="gt"),
                    helper.make_node("Cast", ["m"], ["mi"], name="to_int", to=TensorProto.INT64),
                    helper.make_node("Cast", ["mi"], ["y"], name="back", to=TensorProto.FLOAT)], "y", (4, 4, 4),
                   extra_inits=[_f("zero", 0.0)])
    with pytest.raises(UnsupportedModelError, match="Cast 'to_int' of a mask of spikes to int64: a mask of spikes "
                                                    "compiles only into a Where that selects by it or a Cast of it to "
                                                    "float"):
        compile_model(to_int, mode="exact")


def test_a_comparison_on_static_values_stays_an_op():
    """A mask from the network input alone is the same at every step: it stays a Greater, and the
    Where that selects spikes by it is linear in them (no region, no wrapper)."""
    ann = small([helper.make_node("Conv", ["x", "W"], ["c2"], name="conv2", strides=[2, 2], kernel_shape=[2, 2]),
                 helper.make_node("Greater", ["c2", "zero"], ["m"], name="gt"),
                 helper.make_node("Mul", ["a", "slope"], ["sa"], name="scaled"),
                 helper.make_node("Where", ["m", "a", "sa"], ["y"], name="where")], "y", (4, 4, 4),
                extra_inits=[_f("zero", 0.0), _f("slope", 0.1)])
    for mode in ("folded", "exact"):
        compiled = compile_model(ann, mode=mode)
        assert compiled.info["wrappers"] == [] and not [f for f in compiled.model.functions if f.domain != "pmsm"]
        assert {"Greater", "Where"} <= {n.op_type for n in compiled.model.graph.node}
