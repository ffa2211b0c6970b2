"""ann_form_step: the T = 1 step in the ANN's form (neurons as the quantizer's ops, counted after
onnxruntime's optimization).

- the quantizer-op neurons fire as the neuron functions do, ties and caps included;
- where no rewrite crosses a quantizer (ResNets, a VGG, PQA and QCFS, every level), the ANN-form
  step gives the usual step's outputs, spike counts and counters bit for bit;
- where one does (the head permutation pushed through k's quantizer), the counts read the
  optimized graph's permuted k and still equal the usual step's (the levels are the same; only the
  MatMul after them rounds differently);
- a k tensor whose batch axis moved, or whose size is not the layer's, is refused with the reason,
  and the session keeps its usual first step.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from pmsm_compiler.ops import DOMAIN, add_functions
from pmsm_compiler.ops.neurons import final_step_functions
from pmsm_compiler.runtime.ann_form_step import (FIRE_NODE_PREFIX, NotAnnForm, attach_counting,
                                                 neurons_as_quantizer_ops)
from pmsm_compiler.sessions import make_session
from pmsm_compiler.snn_format import DataInput, NeuronLayer, SNNInfo

_FIELDS = ("mean_outputs", "predictions_by_t", "spikes", "counters", "counters_by_sample")


def _neuron_graph():
    """x → AIFFinal(x, ½) [−2, 8], AIFHalfEvenFinal(x, 0) [−3, 3], IFFinal(x, ½): three spike outputs."""
    nodes = [
        helper.make_node("AIFFinal", ["x", "half"], ["k_aif"], name="aif", domain=DOMAIN, s_min=-2, s_max=8),
        helper.make_node("AIFHalfEvenFinal", ["x", "zero"], ["k_even"], name="even", domain=DOMAIN, s_min=-3, s_max=3),
        helper.make_node("IFFinal", ["x", "half"], ["k_if"], name="if", domain=DOMAIN),
    ]
    graph = helper.make_graph(
        nodes, "neurons", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("k_aif", "k_even", "k_if")],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    add_functions(model, final_step_functions())
    info = SNNInfo(layers=[NeuronLayer(name=k, spike_tensor=k) for k in ("k_aif", "k_even", "k_if")])
    return model, info


def test_quantizer_op_neurons_fire_as_the_neuron_functions():
    model, info = _neuron_graph()
    graph = gs.import_onnx(model)
    assert neurons_as_quantizer_ops(graph, info) == 3
    assert not [n for n in graph.nodes if n.domain == DOMAIN]
    assert sorted(n.name for n in graph.nodes if n.name.startswith(FIRE_NODE_PREFIX)) == [
        FIRE_NODE_PREFIX + k for k in ("k_aif", "k_even", "k_if")]
    rewritten = gs.export_onnx(graph)
    rng = np.random.default_rng(0)
    # ties (x + ½ and x an exact half), values just below them, beyond both caps, and random ones
    ties = np.arange(-8, 20, dtype=np.float32) / 2
    x = np.concatenate([ties, np.nextafter(ties, np.float32(-np.inf)), rng.normal(0, 4, 8 * 64 - 2 * ties.size)])
    x = x.astype(np.float32).reshape(8, 64)
    want = make_session(model, "disable").run(None, {"x": x})
    got = make_session(rewritten, "disable").run(None, {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_array_equal(b, a)


def test_intact_quantizer_ops_become_neurons_again():
    # after onnxruntime's optimization: the fused kernels need the neuron op back
    from pmsm_compiler.runtime.ann_form_step import quantizer_ops_as_neurons

    model, info = _neuron_graph()
    graph = gs.import_onnx(model)
    neurons_as_quantizer_ops(graph, info)
    assert quantizer_ops_as_neurons(graph, info) == 3
    ops = sorted((n.op, tuple(sorted(n.attrs.items()))) for n in graph.nodes)
    assert ops == [("AIFFinal", (("s_max", 8), ("s_min", -2))), ("AIFHalfEvenFinal", (("s_max", 3), ("s_min", -3))),
                   ("IFFinal", ())]
    x = np.random.default_rng(2).normal(0, 4, (4, 64)).astype(np.float32)
    for a, b in zip(make_session(model, "disable").run(None, {"x": x}),
                    make_session(gs.export_onnx(graph), "disable").run(None, {"x": x})):
        np.testing.assert_array_equal(b, a)
    # a rounding op that something else reads stays as it is (the layer runs as the quantizer's ops)
    graph = gs.import_onnx(model)
    neurons_as_quantizer_ops(graph, info)
    fire = next(n for n in graph.nodes if n.name == FIRE_NODE_PREFIX + "k_aif")
    graph.outputs.append(fire.inputs[0])
    assert quantizer_ops_as_neurons(graph, info) == 2


def test_a_neuron_with_a_state_input_is_refused():
    model, info = _neuron_graph()
    model.graph.input.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, None))
    model.graph.node[0].input[1] = "u"
    with pytest.raises(NotAnnForm, match="constant membrane"):
        neurons_as_quantizer_ops(gs.import_onnx(model), info)


def _counted_graph(perm, shape, neurons, x_shape=("batch", 4, 3)):
    """x [batch, 4, 3] → Transpose(perm) → Clip (the fire node of layer 'k') → y; a ReduceSum of k
    to attach. Returns (graph, counting nodes, info, count output)."""
    x = gs.Variable("x", dtype=np.float32, shape=list(x_shape))
    t = gs.Variable("t", dtype=np.float32, shape=None)
    k = gs.Variable("k_opt", dtype=np.float32, shape=shape)
    y = gs.Variable("y", dtype=np.float32)
    nodes = [gs.Node("Transpose", attrs={"perm": perm}, inputs=[x], outputs=[t]),
             gs.Node("Clip", name=FIRE_NODE_PREFIX + "k", inputs=[t], outputs=[k]),
             gs.Node("Identity", inputs=[k], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    spikes = gs.Variable("k", dtype=np.float32)  # the compiled model's name of the spikes
    count = gs.Variable("count", dtype=np.float32)
    counting = [gs.Node("ReduceSum", attrs={"keepdims": 1}, inputs=[spikes, gs.Constant("axes", np.array([1, 2]))],
                        outputs=[count])]
    info = SNNInfo(inputs=[DataInput("x")], layers=[NeuronLayer(name="k", spike_tensor="k", neurons=neurons)])
    return graph, counting, info, count


@pytest.mark.parametrize("perm,shape,x_shape", [((0, 2, 1), None, ("batch", 4, 3)),
                                                 ((0, 2, 1), ["batch", 3, 4], ("batch", 4, 3)),
                                                 ((0, 2, 1), None, (None, 4, 3)),  # an unnamed batch dimension
                                                 ((0, 2, 1), ["unk__3", 3, 4], (None, 4, 3))])
def test_counting_reads_the_optimized_graphs_k_in_its_layout(perm, shape, x_shape):
    graph, counting, info, count = _counted_graph(perm, shape, neurons=12, x_shape=x_shape)
    attach_counting(graph, counting, info, [count])
    assert counting[0].inputs[0].name == "k_opt" and graph.outputs[-1] is count
    model = gs.export_onnx(graph)
    x = np.random.default_rng(1).integers(-3, 4, (5, 4, 3)).astype(np.float32)
    y, c = make_session(model, "disable").run(None, {"x": x})
    np.testing.assert_array_equal(c.reshape(5), x.sum(axis=(1, 2)))


@pytest.mark.parametrize("perm,shape,neurons,why", [
    ((1, 0, 2), None, 12, "laid out as \\[4, 'batch', 3\\]"),  # the batch axis moved: traced through the Transpose
    ((0, 1, 2), ["batch", 4, 4], 12, "laid out as"),  # more elements than the layer has (padding)
    ((1, 0, 2), ["n", 5, 3], 12, "laid out as"),  # another size per sample
])
def test_a_k_tensor_not_per_sample_is_refused(perm, shape, neurons, why):
    graph, counting, info, count = _counted_graph(perm, shape, neurons)
    with pytest.raises(NotAnnForm, match=why):
        attach_counting(graph, counting, info, [count])


def test_a_k_tensor_of_unknown_shape_is_refused():
    # two dynamic dimensions: which one is the batch cannot be told
    graph, counting, info, count = _counted_graph((0, 1, 2), None, 12, x_shape=("batch", "n", 3))
    with pytest.raises(NotAnnForm, match="shape of its spikes in the optimized graph is unknown"):
        attach_counting(graph, counting, info, [count])


def test_a_fire_node_gone_is_refused():
    graph, counting, info, count = _counted_graph((0, 1, 2), None, 12)
    graph.nodes[1].name = "renamed"
    with pytest.raises(NotAnnForm, match="fire node is gone"):
        attach_counting(graph, counting, info, [count])


# --- whole SNNs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exact_models(tmp_path_factory):
    pytest.importorskip("torch")
    import torch

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.verify_export import randomize_for_check
    from pmsm_compiler.training.zoo.resnet import ResNetCifar
    from pmsm_compiler.training.zoo.vgg import VGG

    tmp = tmp_path_factory.mktemp("ann_form")
    nets = {"resnet_pqa": ResNetCifar((1, 1, 1), (16, 16, 32), act="pqa"),
            "resnet_qcfs": ResNetCifar((1, 1, 1), (16, 16, 32), act="qcfs"),
            "vgg_maxpool": VGG((16, 4, "M", 16, "M", 32, "M"), act="pqa", hidden=32, image_size=16)}
    out = {}
    for name, net in nets.items():
        torch.manual_seed(0)
        randomize_for_check(net, torch.randn(16, 3, 16, 16), seed=0)
        path = str(tmp / f"{name}.onnx")
        export_onnx(net.eval(), path, input_shape=(1, 3, 16, 16))
        out[name] = compile_model(load_model(path), mode="exact").model
        if name == "resnet_pqa":
            out[name + "_folded"] = compile_model(load_model(path), mode="folded").model
    return out


@pytest.mark.parametrize("name", ["resnet_pqa", "resnet_qcfs", "vgg_maxpool"])
@pytest.mark.parametrize("opt_level,kernels", [("disable", "auto"), ("basic", "auto"), ("all", "auto"), ("all", "off")])
def test_where_no_rewrite_crosses_a_quantizer_both_forms_agree_bit_for_bit(exact_models, name, opt_level, kernels):
    from pmsm_compiler.runtime import SNNSession

    ann_form = SNNSession(exact_models[name], opt_level=opt_level, kernels=kernels)
    usual = SNNSession(exact_models[name], opt_level=opt_level, ann_form=False, kernels=kernels)
    assert ann_form.ann_form and ann_form.ann_form_note is None and not usual.ann_form
    if ann_form.kernels:  # every neuron back as a neuron op after the optimization, fused with its counting
        assert ann_form.fused_layers == len(ann_form.layers)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        a = usual.run_batch(x, 1, sample_counters=True)
        b = ann_form.run_batch(x, 1, sample_counters=True)
        for field in _FIELDS:
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=f"{field} batch {batch}")
        assert b.spikes.sum() > 0
        # a longer run's first step is the usual one: T = 2 is unchanged by the form
        np.testing.assert_array_equal(ann_form.run_batch(x, 2).spikes, usual.run_batch(x, 2).spikes)


def test_a_refused_form_keeps_the_usual_first_step_and_says_why(exact_models, monkeypatch):
    from pmsm_compiler.runtime import SNNSession, ann_form_step

    def refuse(*args, **kwargs):
        raise NotAnnForm("layer x: its spikes are laid out as [3, 'batch'] in the optimized graph")

    monkeypatch.setattr(ann_form_step, "attach_counting", refuse)
    session = SNNSession(exact_models["resnet_pqa"])
    assert not session.ann_form and "laid out as" in session.ann_form_note
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    usual = SNNSession(exact_models["resnet_pqa"], ann_form=False).run_batch(x, 1)
    np.testing.assert_array_equal(session.run_batch(x, 1).mean_outputs, usual.mean_outputs)


def test_a_folded_model_keeps_the_usual_first_step(exact_models):
    # folded: the neurons emit k and the weights carry θ; the ANN's arithmetic is not kept anyway
    from pmsm_compiler.runtime import SNNSession

    session = SNNSession(exact_models["resnet_pqa_folded"])
    assert session.info.mode == "folded" and not session.ann_form and session.ann_form_note is None


@pytest.fixture(scope="module")
def attention_scores(tmp_path_factory):
    """(ANN, exact-mode compile) of one attention layer with the head permutation
    (``test_compile_vit._ScaledAttentionScores``: λ's whose steps are not powers of two)."""
    torch = pytest.importorskip("torch")
    from test_compile_vit import _ScaledAttentionScores

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.training.export import export_onnx

    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("scores") / "attention_scores.onnx")
    export_onnx(_ScaledAttentionScores(heads=2).eval(), path, input_shape=(1, 32, 4, 4))
    ann = load_model(path)
    return ann, compile_model(ann, mode="exact")


def test_permuted_k_counts_equal_the_usual_steps(tmp_path, attention_scores):
    """The head permutation is pushed through k's quantizer in the ANN form's optimized graph (k is
    laid out [batch, tokens, heads, d] there, [batch, heads, tokens, d] in the model): its counts
    are still the usual step's, while the scores follow the ANN."""
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime.ann_form_step import detach_counting
    from pmsm_compiler.runtime.step_graphs import export_variant, variant_graph
    from pmsm_compiler.sessions import write_optimized_model

    ann, compiled = attention_scores
    info = compiled.info
    graph = variant_graph(compiled.model, info, True, True)
    neurons_as_quantizer_ops(graph, info)
    detach_counting(graph, info)
    graph.cleanup()
    write_optimized_model(export_variant(graph, compiled.model, True), str(tmp_path / "opt.onnx"), "all")
    optimized = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "opt.onnx"), load_external_data=False))
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in optimized.graph.value_info}
    k_layer = next(layer for layer in info.layers if "k_quant" in layer.name)
    fire = next(n for n in optimized.graph.node if n.name == FIRE_NODE_PREFIX + k_layer.spike_tensor)
    assert list(k_layer.shape) == [2, 16, 16] and shapes[fire.output[0]][1:] == [16, 2, 16]

    x = np.random.default_rng(0).normal(0, 1, (16, 32, 4, 4)).astype(np.float32)
    a = SNNSession(compiled.model, ann_form=False).run_batch(x, 1, sample_counters=True)
    b = SNNSession(compiled.model).run_batch(x, 1, sample_counters=True)
    for field in ("spikes", "counters", "counters_by_sample"):
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=field)
    plain_ann = make_session(ann, "all").run(None, {"input": x})[0]
    assert np.array_equal(b.mean_outputs, plain_ann) and not np.array_equal(a.mean_outputs, plain_ann)


def test_a_longer_runs_t1_figures_come_from_a_t1_run(attention_scores):
    """The first step of a T > 1 run is not in the ANN's form: on the head-permutation attention
    scores its outputs differ from the ANN's, and a report's t = 1 figures would too. run_dataset
    takes them from a T = 1 run of their own (``t1_from``)."""
    from pmsm_compiler.data.dataset import Dataset
    from pmsm_compiler.runtime import SNNSession, run_dataset

    ann, compiled = attention_scores
    x = np.random.default_rng(0).normal(0, 1, (256, 32, 4, 4)).astype(np.float32)
    plain_ann = make_session(ann, "all")
    labels = plain_ann.run(None, {"input": x})[0].argmax(1)  # the ANN's own predictions as labels
    data = Dataset(x, labels, name="scores")
    session = SNNSession(compiled.model)
    usual = session.run_batch(x, 3).predictions_by_t[0]
    assert (usual != labels).any()  # the first step of a longer run: the usual form, other predictions
    report = run_dataset(session, data, 3, 64, None, None, ann_session=plain_ann, progress=False)
    assert report["t1_from"].startswith("a T = 1 run")
    assert report["t1_prediction_agreement"] == 1.0 and report["accuracy_by_t"][0] == report["ann_accuracy"] == 1.0
    one = run_dataset(session, data, 1, 64, None, None, ann_session=plain_ann, progress=False)
    assert "t1_from" not in one and one["t1_prediction_agreement"] == 1.0
    kept = run_dataset(SNNSession(compiled.model, ann_form=False), data, 3, 64, None, None, ann_session=plain_ann,
                       progress=False)
    assert "t1_from" not in kept and kept["t1_prediction_agreement"] < 1.0


def test_an_unnamed_batch_dimension(attention_scores):
    """A model whose batch dimension has neither a size nor a name: recorded as null (it was the
    string "None"), and its T = 1 step is in the ANN's form (onnxruntime names the dimension in
    its optimized graph; the k tensors were refused for that)."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.runtime import SNNSession

    ann = onnx.ModelProto()
    ann.CopyFrom(attention_scores[0])
    for value in list(ann.graph.input) + list(ann.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()
    compiled = compile_model(ann, mode="exact")
    assert compiled.info.inputs[0].shape == [None, 32, 4, 4]
    session = SNNSession(compiled.model)
    assert session.ann_form and session.ann_form_note is None
    x = np.random.default_rng(3).normal(0, 1, (5, 32, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(session.run_batch(x, 1).mean_outputs, make_session(ann, "all").run(None, {"input": x})[0])


def test_a_fixed_batch_dimension(attention_scores):
    """A model declared with a fixed batch (as some exporters write it): its k tensors' first
    dimension must be that batch, and the T = 1 run, padded to it, equals the plain ANN."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.runtime import SNNSession

    ann = onnx.ModelProto()
    ann.CopyFrom(attention_scores[0])
    for value in list(ann.graph.input) + list(ann.graph.output):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = 4
    compiled = compile_model(ann, mode="exact")
    assert compiled.info.inputs[0].shape == [4, 32, 4, 4]
    session = SNNSession(compiled.model)
    assert session.ann_form and session.ann_form_note is None
    x = np.random.default_rng(4).normal(0, 1, (4, 32, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(session.run_batch(x, 1).mean_outputs, make_session(ann, "all").run(None, {"input": x})[0])
