"""store_weights_float16: a model's large weights stored as float16 behind a Cast (half the file),
computing exactly what the same model with its weights rounded to float16 computes; such a file
compiles, and exact mode is lossless on it."""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.metadata import get_metadata  # noqa: E402
from pmsm_compiler.pipeline import compile_and_verify  # noqa: E402
from pmsm_compiler.sessions import make_session  # noqa: E402
from pmsm_compiler.training.export import (FLOAT16_MIN_ELEMENTS, METADATA_KEY, export_onnx,  # noqa: E402
                                           store_weights_float16)
from pmsm_compiler.training.zoo import build_model  # noqa: E402


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_model("vit_tiny", act="pqa").eval()


def test_large_float_initializers_become_float16_and_small_ones_stay(vit):
    proto = export_onnx(vit)
    before = {i.name: (i.data_type, int(np.prod(i.dims))) for i in proto.graph.initializer}
    converted = store_weights_float16(proto)
    large = {n for n, (t, size) in before.items() if t == onnx.TensorProto.FLOAT and size >= FLOAT16_MIN_ELEMENTS}
    assert converted and set(converted) == large
    after = {i.name: i.data_type for i in proto.graph.initializer}
    for name in large:
        assert name not in after and after[name + "_float16"] == onnx.TensorProto.FLOAT16
        cast = next(n for n in proto.graph.node if n.output == [name])
        assert cast.op_type == "Cast" and cast.input == [name + "_float16"]
    small = set(before) - large
    assert all(after[n] == before[n][0] for n in small)  # λ, biases, shapes untouched
    assert get_metadata(proto, METADATA_KEY)["weights_float16"] == converted
    onnx.checker.check_model(proto, full_check=True)


def _mlp(w1, w2):
    """x [N, 64] → MatMul w1 → MatMul w2: two float32 weights of 4096 elements."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_a_weight_beyond_float16s_range_stays_float32():
    """float16 tops out at 65504: a larger weight would become inf, so its tensor is left as it is."""
    rng = np.random.default_rng(0)
    w1, w2 = (rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2))
    w2[3, 5] = 1e5
    proto = _mlp(w1, w2)
    assert store_weights_float16(proto) == ["w1"]
    types = {i.name: i.data_type for i in proto.graph.initializer}
    assert types == {"w1_float16": onnx.TensorProto.FLOAT16, "w2": onnx.TensorProto.FLOAT}
    x = rng.standard_normal((4, 64)).astype(np.float32)
    assert np.isfinite(make_session(proto).run(None, {"x": x})[0]).all()


def test_an_initializer_that_is_a_graph_input_and_a_taken_name_are_respected():
    """An initializer listed among the graph inputs (a feed may replace it) stays float32; a stored
    name already in use gets another."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(1)
    proto = _mlp(*(rng.standard_normal((64, 64)).astype(np.float32) for _ in range(2)))
    proto.graph.input.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [64, 64]))
    proto.graph.node[0].output[0] = "w1_float16"  # the name the stored w1 would take
    proto.graph.node[1].input[0] = "w1_float16"
    assert store_weights_float16(proto) == ["w1"]
    stored = {i.name for i in proto.graph.initializer} - {"w2"}
    assert stored == {"w1_float16_"}
    onnx.checker.check_model(proto, full_check=True)


def test_it_computes_what_the_model_with_rounded_weights_computes(vit):
    import copy

    stored = export_onnx(vit, weights_float16=True)
    rounded = copy.deepcopy(vit)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.numel() >= FLOAT16_MIN_ELEMENTS:
                p.copy_(p.half().float())
    reference = export_onnx(rounded)
    assert stored.ByteSize() < 0.85 * reference.ByteSize()
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    for level in ("disable", "all"):
        a = make_session(stored, level).run(None, {"input": x})[0]
        b = make_session(reference, level).run(None, {"input": x})[0]
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_a_float16_stored_model_compiles_and_verifies(vit, mode):
    result = compile_and_verify(export_onnx(vit, weights_float16=True), mode)
    assert result.verification["passed"], result.verification["failures"]
    if mode == "exact":
        assert result.verification["max_abs_diff"] == 0.0
        assert result.verification["plain_ann"]["max_abs_diff"] == 0.0
    # the compiled SNN reads float32 weights: the compiler folded the Casts
    assert not any(n.op_type == "Cast" and n.input[0].endswith("_float16") for n in result.compiled.model.graph.node)


def test_pmsm_export_writes_float16_weights(tmp_path):
    import json
    import os

    from pmsm_compiler.cli.export import main as export_cli

    plain, half = str(tmp_path / "plain.onnx"), str(tmp_path / "half.onnx")
    export_cli(["--model", "vit_tiny", "-o", plain], standalone_mode=False)
    export_cli(["--model", "vit_tiny", "--weights-float16", "-o", half, "--json", str(tmp_path / "r.json")],
               standalone_mode=False)
    assert os.path.getsize(half) < 0.85 * os.path.getsize(plain)
    assert json.load(open(tmp_path / "r.json"))["weights_float16"] is True
    types = {i.data_type for i in onnx.load(half).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT16 not in \
        {i.data_type for i in onnx.load(plain).graph.initializer}
