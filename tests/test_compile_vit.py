"""A PQA ViT compiles: LayerNorm, Softmax and activation×activation MatMuls become temporal
wrappers, every quantizer (signed and unsigned) an AIF neuron; exact mode is lossless at T=1."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.compiler import compile_model  # noqa: E402
from pmsm_compiler.training.export import export_onnx  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402
from pmsm_compiler.training.zoo import build_model  # noqa: E402
from pmsm_compiler.runtime import SNNSession  # noqa: E402
from pmsm_compiler.sessions import make_session  # noqa: E402
from pmsm_compiler.verify import random_inputs, verify  # noqa: E402


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("vit_tiny", act="pqa").eval()
    path = str(tmp_path_factory.mktemp("vit") / "vit_tiny.onnx")
    export_onnx(net, path)
    return path


def test_vit_exact_is_lossless_at_t1(vit_path):
    ann = load_model(vit_path)
    compiled = compile_model(ann, mode="exact")
    neurons = {layer["neuron"] for layer in compiled.layers}
    assert neurons == {"AIF"}  # unsigned quantizers are AIF with s_min = 0, not IF
    assert any(layer["s_min"] == 0 for layer in compiled.layers)
    ops = {w["op"] for w in compiled.info["wrappers"]}
    assert {"LayerNormalization", "Softmax", "MatMul"} <= ops
    x = random_inputs(compiled.info, 16, seed=1)
    result = verify(ann, compiled, x, mode="exact")
    assert result["passed"], result["failures"]
    assert result["max_abs_diff"] == 0.0
    session = SNNSession(compiled.model)
    out = session.run_batch(x, 1, keep_outputs=True).outputs_by_t[0]
    assert np.array_equal(out, make_session(ann).run(None, {"input": x})[0])


def test_vit_folded_runs_over_time(vit_path):
    compiled = compile_model(load_model(vit_path), mode="folded")
    assert compiled.info["time_input"] == "pmsm_t"  # non-homogeneous wrappers need the step index
    x = random_inputs(compiled.info, 4, seed=2)
    res = SNNSession(compiled.model).run_batch(x, 4)
    assert res.spikes.dtype == np.int64 and res.spikes.shape == (4, 4, len(compiled.layers))
    assert np.isfinite(res.mean_outputs).all()
