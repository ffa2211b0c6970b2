"""Tests for pmsm_compiler.training.export: pmsm::PQA / pmsm::QCFS nodes with local functions, validity,
dynamic batch, stock onnxruntime, and per-quantizer level agreement with PyTorch eager.

Models get random λ's and randomized BatchNorm statistics first (``randomize_for_check``), so
that every quantizer has a distinct λ, BatchNorm folding changes the conv weights, and the levels
are spread over the range (not all 0): a level check on a model at its initial λ = 8 would be
nearly vacuous.
"""

from __future__ import annotations

import copy
import functools
import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pmsm_compiler.training.activations import QCFS, quantized_activations, swap_relu
from pmsm_compiler.data import NORMALIZATIONS, load_bundled_sample, normalize
from pmsm_compiler.training.export import METADATA_KEY, export_onnx, get_metadata
from pmsm_compiler.training.zoo import build_model
from pmsm_compiler.training.verify_export import (
    compare_levels,
    k_ranges_of,
    make_session,
    overall_rate,
    pqa_outputs_onnx,
    pqa_outputs_torch,
    quantizer_nodes,
    randomize_for_check,
    with_fed_quantizer_inputs,
    with_quantizer_outputs,
)

BASIC = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
ALL = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
MAX_RATE = 1e-3


def _vit_available() -> str | None:
    """None when vit_tiny can be built, else the reason it cannot."""
    if importlib.util.find_spec("pmsm_compiler.training.zoo.vit") is None:
        return "pmsm_compiler/training/zoo/vit.py is not there yet (being written separately)"
    try:
        build_model("vit_tiny")
    except Exception as exc:  # noqa: BLE001 - any failure: the ViT is not ready
        return f"vit_tiny cannot be built yet: {type(exc).__name__}: {exc}"
    return None


VIT_SKIP = _vit_available()
# vit_tiny's export alone takes 5-8 s on a loaded 2-core machine: it runs with the slow tests
# (pytest -m slow) to keep this file under 30 s; bench/export_agreement.py covers vit_s.
MODELS = ["resnet_tiny", "vgg_tiny",
          pytest.param("vit_tiny", marks=[pytest.mark.slow,
                                          pytest.mark.skipif(VIT_SKIP is not None, reason=str(VIT_SKIP))])]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a busy 2-core machine, two OpenMP threads slow torch down many times over.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def images(n: int, offset: int = 0) -> np.ndarray:
    ds = load_bundled_sample()
    return normalize(ds.x[offset:offset + n], *NORMALIZATIONS["cifar10"])


@functools.lru_cache(maxsize=None)
def exported(name: str, act: str = "pqa"):
    """(model, node-form ModelProto) of a randomized zoo model; cached for the module."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, act=act)
    # The ViT's quantizers see very different scales (softmax probabilities vs LayerNorm outputs):
    # λ from its own input's scale times a random factor in [0.5, 2]; the CNNs: λ ~ U(2, 10).
    mode = "calibrated" if name.startswith("vit") else "uniform"
    randomize_for_check(model, torch.from_numpy(images(32, 900)), seed=1, lam_mode=mode)
    proto = export_onnx(model, input_shape=(1, 3, 32, 32))
    return model, proto


@functools.lru_cache(maxsize=None)
def torch_outputs(name: str):
    model, _ = exported(name)
    return pqa_outputs_torch(model, images(128))


# ------------------------------------------------------------------------------------------------
# Structure, validity, dynamic batch, stock onnxruntime
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_node_export_structure(name):
    model, proto = exported(name)
    quants = quantized_activations(model)
    nodes = quantizer_nodes(proto)
    # one pmsm node per quantizer module, of the module's op, mapped through the exporter metadata
    assert len(nodes) == len(quants)
    assert [q.module for q in nodes] == [n for n, _ in quants]
    assert [q.op for q in nodes] == [m.onnx_op for _, m in quants]
    for op in ("PQA", "QCFS"):
        assert sum(n.op_type == op and n.domain == "pmsm" for n in proto.graph.node) == \
            sum(m.onnx_op == op for _, m in quants)
    if name != "vit_tiny":  # the CNNs: PQA only
        assert all(m.onnx_op == "PQA" for _, m in quants)
    # the quantizer arithmetic lives in the function bodies, not in the main graph
    assert not any(n.op_type in ("Floor", "Clip") for n in proto.graph.node)
    # each node's λ input holds its own module's λ (float32)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for q, (_, m) in zip(nodes, quants):
        assert inits[q.lam_input].shape == ()
        assert inits[q.lam_input] == np.float32(m.lam.detach())
        assert q.levels == m.levels
    # model-local functions for exactly the ops used, in the pmsm domain, with the model's opset
    used = {(n.domain, n.op_type) for n in proto.graph.node if n.domain == "pmsm"}
    assert {(f.domain, f.name) for f in proto.functions} == used
    opsets = {o.domain: o.version for o in proto.opset_import}
    assert opsets["pmsm"] == 1
    for f in proto.functions:
        assert {o.domain: o.version for o in f.opset_import}[""] == opsets[""]
        # data path X -> Div -> Add ½ -> Floor -> Clip -> Mul -> Y (the module's op order)
        producer = {o: n for n in f.node for o in n.output}
        chain, value = [], f.output[0]
        while value in producer:
            node = producer[value]
            chain.append(node.op_type)
            value = node.input[0]
        assert value == f.input[0] and chain[::-1] == ["Div", "Add", "Floor", "Clip", "Mul"], chain
    # validity: full check, strict shape inference through the functions
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    shapes = {vi.name: vi.type.tensor_type.shape for vi in inferred.graph.value_info}
    tout = torch_outputs(name)
    for q in nodes:
        dims = shapes[q.output].dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value")        # dynamic batch
        assert [d.dim_value for d in dims[1:]] == list(tout.outputs[q.module].shape[1:])
    for vi in list(proto.graph.input) + list(proto.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param, vi.name


@pytest.mark.parametrize("name", MODELS)
def test_stock_onnxruntime_runs_batch_1_and_7(name):
    model, proto = exported(name)
    opts = ort.SessionOptions()   # a stock session: no custom-op library, no pmsm registration
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = images(7)
    y7 = sess.run(None, {"input": x})[0]
    y1 = np.concatenate([sess.run(None, {"input": x[i:i + 1]})[0] for i in range(7)])
    assert y7.shape == (7, 10) and y1.shape == (7, 10) and np.isfinite(y7).all()
    np.testing.assert_allclose(y1, y7, rtol=0, atol=1e-5)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    # rows agree unless a rare level flip (see test_levels_agree) hit that image
    close_rows = np.all(np.abs(y7 - ref) <= 1e-4, axis=1)
    assert close_rows.sum() >= 5, np.abs(y7 - ref).max(axis=1)


# ------------------------------------------------------------------------------------------------
# Levels at every quantizer output: onnxruntime vs PyTorch eager
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [BASIC, ALL], ids=["ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"])
@pytest.mark.parametrize("name", MODELS)
def test_levels_agree(name, level):
    model, proto = exported(name)
    tout = torch_outputs(name)
    oout = pqa_outputs_onnx(proto, images(128), level=level)
    assert oout.by_metadata and oout.names == tout.names
    stats = compare_levels(tout, oout, k_ranges_of(model))
    rate = overall_rate(stats)
    n = sum(s.n for s in stats)
    print(f"\n{name} {level.name}: level disagreement {sum(s.diff for s in stats)}/{n} = {rate:.2e}; "
          f"first quantizer {stats[0].name}: {stats[0].diff}/{stats[0].n} = {stats[0].rate:.2e}; "
          f"max |dk| {max(s.max_dk for s in stats)}")
    for s in stats:
        print(f"  {s.name:28s} {s.op:4s} n={s.n:8d} diff={s.diff:4d} rate={s.rate:.1e} "
              f"nonzero={s.nonzero / s.n:.2f} clipped={s.clipped / s.n:.2f}")
    assert rate <= MAX_RATE
    assert stats[0].rate <= MAX_RATE
    # isolated: each layer computed in onnxruntime from PyTorch's inputs to it, so only the flips
    # that layer causes itself count (no cascade); float-level flips are rarer still
    iso = compare_levels(tout, pqa_outputs_onnx(proto, images(128), level=level, fed=tout))
    print(f"  isolated: {sum(s.diff for s in iso)}/{n} = {overall_rate(iso):.2e}, "
          f"worst {max(s.rate for s in iso):.1e}")
    assert max(s.rate for s in iso) <= 1e-4
    # exported values are on the grid of their own λ on both sides
    assert max(s.off_grid for s in stats) < 1e-3
    # the check is not vacuous: levels are spread, and both ends of the range occur somewhere
    assert sum(s.nonzero for s in stats) / n > 0.3
    assert sum(s.clipped for s in stats) > 0
    # exposing the quantizer outputs does not change what the graph computes
    plain = make_session(proto, level).run(None, {"input": images(128)})[0]
    np.testing.assert_array_equal(plain, oout.logits)


def test_levels_map_by_order_without_metadata():
    model, proto = exported("resnet_tiny")
    bare = copy.deepcopy(proto)
    for node in bare.graph.node:
        del node.metadata_props[:]
    oout = pqa_outputs_onnx(bare, images(128), level=BASIC)
    assert not oout.by_metadata
    assert oout.names == [q.output for q in quantizer_nodes(bare)]
    by_order = compare_levels(torch_outputs("resnet_tiny"), oout)
    by_name = compare_levels(torch_outputs("resnet_tiny"), pqa_outputs_onnx(proto, images(128), level=BASIC))
    assert [(s.name, s.n, s.diff) for s in by_order] == [(s.name, s.n, s.diff) for s in by_name]


def test_fed_quantizer_inputs_cut_the_cascade():
    """The isolated comparison really feeds each layer from the given outputs: zeroing the first
    quantizer's fed output changes what the second one computes, and nothing else upstream."""
    model, proto = exported("resnet_tiny")
    x = images(8)
    tout = pqa_outputs_torch(model, x)
    first, second = tout.names[0], tout.names[1]
    fed_model = with_fed_quantizer_inputs(proto)
    assert f"{quantizer_nodes(proto)[0].output}__fed" in [i.name for i in fed_model.graph.input]
    onnx.checker.check_model(fed_model, full_check=True)
    same = pqa_outputs_onnx(proto, x, level=BASIC, fed=tout)
    np.testing.assert_array_equal(same.outputs[second], tout.outputs[second])
    zeroed = copy.deepcopy(tout)
    zeroed.outputs[first] = np.zeros_like(tout.outputs[first])
    changed = pqa_outputs_onnx(proto, x, level=BASIC, fed=zeroed)
    np.testing.assert_array_equal(changed.outputs[first], same.outputs[first])   # computed, not fed
    assert not np.array_equal(changed.outputs[second], same.outputs[second])
    # with zeros fed, layers.0.act1 quantizes its BatchNorm shift alone: check against eager
    with torch.no_grad():
        block = model.layers[0]
        expected = block.act1(block.bn1(block.conv1(torch.zeros_like(torch.from_numpy(tout.outputs[first])))))
    np.testing.assert_array_equal(np.rint(changed.outputs[second] / changed.steps[second]),
                                  np.rint(expected.numpy() / changed.steps[second]))


def test_with_quantizer_outputs_adds_each_output_once():
    _, proto = exported("vgg_tiny")
    once = with_quantizer_outputs(proto)
    twice = with_quantizer_outputs(once)
    names = [o.name for o in twice.graph.output]
    assert names == ["logits"] + [q.output for q in quantizer_nodes(proto)]
    assert len(proto.graph.output) == 1  # the original is untouched


# ------------------------------------------------------------------------------------------------
# pqa_as="plain" with both exporters
# ------------------------------------------------------------------------------------------------

def _plain_quantizer_outputs(proto: onnx.ModelProto) -> list[str]:
    """The Mul output of every Div -> Add -> Floor -> Clip -> Mul chain, in graph order."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outs = []
    for n in proto.graph.node:
        if n.op_type != "Floor":
            continue
        add = producer[n.input[0]]
        div = producer[add.input[0]]
        (clip,) = consumers[n.output[0]]
        (mul,) = consumers[clip.output[0]]
        assert (div.op_type, add.op_type, clip.op_type, mul.op_type) == ("Div", "Add", "Clip", "Mul")
        outs.append(mul.output[0])
    return outs


@pytest.mark.parametrize("name,exporter", [
    ("vgg_tiny", "dynamo"), ("vgg_tiny", "legacy"), ("resnet_tiny", "legacy"),
    pytest.param("resnet_tiny", "dynamo", marks=pytest.mark.slow),
])
def test_plain_export_matches_node_form(name, exporter):
    model, node_proto = exported(name)
    proto = export_onnx(model, input_shape=(1, 3, 32, 32), pqa_as="plain", exporter=exporter)
    ops = [n.op_type for n in proto.graph.node]
    assert "Floor" in ops and "Clip" in ops
    assert not any(n.domain == "pmsm" for n in proto.graph.node)
    assert not any(o.domain == "pmsm" for o in proto.opset_import) and len(proto.functions) == 0
    plain_q = _plain_quantizer_outputs(proto)
    assert len(plain_q) == len(quantized_activations(model))
    info = get_metadata(proto, METADATA_KEY)
    assert f"{exporter}, pqa_as=plain" in info["exporter"]
    x = images(128)
    for level in (BASIC, ALL):
        ref = pqa_outputs_onnx(node_proto, x, level=level)
        bigger = copy.deepcopy(proto)
        for o in plain_q:
            bigger.graph.output.append(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None))
        values = make_session(bigger, level).run(None, {"input": x})
        logits, quant = values[0], values[1:]
        # every quantizer output is bit-identical: same float32 step, same op sequence, same
        # BatchNorm-folded conv weights
        for name, v in zip(ref.names, quant):
            np.testing.assert_array_equal(v, ref.outputs[name], err_msg=f"{exporter} {name}")
        if "GlobalAveragePool" not in ops:
            np.testing.assert_array_equal(logits, ref.logits)
        else:
            # The legacy exporter writes ResNet's AdaptiveAvgPool2d(1) as GlobalAveragePool, dynamo
            # as ReduceMean: a different summation after the last quantizer, so the logits differ
            # in the last bits only.
            assert exporter == "legacy"
            np.testing.assert_allclose(logits, ref.logits, rtol=0, atol=1e-5)


def test_legacy_exporter_rejects_node_form():
    model, _ = exported("vgg_tiny")
    with pytest.raises(ValueError, match="plain"):
        export_onnx(model, exporter="legacy", pqa_as="node")


# ------------------------------------------------------------------------------------------------
# QCFS and metadata
# ------------------------------------------------------------------------------------------------

def test_qcfs_exports_as_pmsm_qcfs_and_writes_the_file(tmp_path):
    torch.manual_seed(0)
    # a small QCFS CNN (the zoo models take the same code path; this keeps the export short)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4), QCFS(levels=8, lam=8.0),
        torch.nn.AvgPool2d(4), torch.nn.Conv2d(4, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        QCFS(levels=4, lam=4.0), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10))
    randomize_for_check(model, torch.from_numpy(images(32, 900)), seed=2)
    path = tmp_path / "sub" / "m.onnx"
    model.train()
    proto = export_onnx(model, str(path), metadata={"normalization": {"mean": [0.5], "std": [0.25]}})
    assert model.training is True  # the mode is restored
    model.eval()
    quants = quantized_activations(model)
    assert [(n.domain, n.op_type) for n in proto.graph.node if n.domain == "pmsm"] == [("pmsm", "QCFS")] * len(quants)
    assert [(f.domain, f.name) for f in proto.functions] == [("pmsm", "QCFS")]
    onnx.checker.check_model(proto, full_check=True)
    x = images(16)
    stats = compare_levels(pqa_outputs_torch(model, x), pqa_outputs_onnx(proto, x, level=ALL), k_ranges_of(model))
    assert overall_rate(stats) <= MAX_RATE
    assert all(s.op == "QCFS" for s in stats)
    assert sum(s.nonzero for s in stats) > 0
    # the file on disk is the returned model, metadata included
    loaded = onnx.load(str(path))
    assert get_metadata(loaded, METADATA_KEY) == get_metadata(proto, METADATA_KEY)
    info = get_metadata(loaded, METADATA_KEY)
    assert info["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert [a["op"] for a in info["activations"]] == ["QCFS"] * len(quants)


@pytest.mark.parametrize("name", MODELS)
def test_metadata_lists_the_activations(name):
    model, proto = exported(name)
    info = get_metadata(proto, METADATA_KEY)
    assert "dynamo, pqa_as=node" in info["exporter"]
    expected = [{"name": n, "op": m.onnx_op, "L": m.levels, "alpha": m.alpha, "beta": m.beta,
                 "lambda": float(m.lam.detach())} for n, m in quantized_activations(model)]
    assert info["activations"] == expected
    assert len({a["lambda"] for a in info["activations"]}) == len(expected)  # random, distinct
    assert proto.producer_name == "pmsm-compiler"


def test_swapped_third_party_model_exports_with_one_node_per_relu():
    """swap_relu on a model with functional relus, then export: one pmsm::PQA per swapped relu,
    mapped to the new modules, and the levels agree with eager."""

    class ThirdParty(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.fc = torch.nn.Linear(6, 10)

        def forward(self, x):
            x = torch.nn.functional.relu(self.conv(x))
            return self.fc(x.mean((2, 3)).relu())

    torch.manual_seed(3)
    model = ThirdParty().eval()
    report = swap_relu(model)
    assert report.swapped == ["pmsm_act0 (functional relu)", "pmsm_act1 (functional relu)"]
    for _, m in quantized_activations(model):
        m.lam.data.fill_(3.3)
    proto = export_onnx(model, input_shape=(1, 3, 32, 32))
    assert [(q.op, q.module) for q in quantizer_nodes(proto)] == [("PQA", "pmsm_act0"), ("PQA", "pmsm_act1")]
    x = images(32)
    stats = compare_levels(pqa_outputs_torch(model, x), pqa_outputs_onnx(proto, x, level=ALL))
    assert overall_rate(stats) <= MAX_RATE
