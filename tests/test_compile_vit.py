"""A PQA ViT compiles: LayerNorm, Softmax and activation×activation MatMuls become temporal
wrappers, every quantizer (signed and unsigned) an AIF neuron; exact mode is lossless at T=1
(bit for bit against the plain ANN at every onnxruntime level: the T = 1 step runs in the ANN's
form)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.compiler import compile_model  # noqa: E402
from pmsm_compiler.training.export import export_onnx  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402
from pmsm_compiler.training.zoo import build_model  # noqa: E402
from pmsm_compiler.runtime import SNNSession  # noqa: E402
from pmsm_compiler.sessions import make_session  # noqa: E402
from pmsm_compiler.snn_format import read_snn_info  # noqa: E402
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


def test_vit_dense_operations_match_the_formulas(vit_path, tmp_path):
    """What a chip would compute besides the spikes (issue 19, item 5): the dense operations the
    compiler records for each wrapper equal the formulas (ops.temporal, docs/report-schema.md) worked
    out by hand for vit_tiny's shapes, and pmsm-run reports them per wrapper, in total and as a share."""
    import json

    from click.testing import CliRunner

    from pmsm_compiler.cli.compile import main as compile_main
    from pmsm_compiler.cli.run import main as run_main

    # vit_tiny: 32 px, patch 8 → 16 patches + the class token = 17 tokens of dim 32, 2 heads of 16, depth 2
    n, dim, heads, hd = 17, 32, 2, 16
    tokens, scores, head_out = n * dim, heads * n * n, heads * n * hd  # elements per sample
    layer_norm = (n * (7 * dim + 5), 2 * (tokens + tokens))  # 7 per element with γ and β, 5 per row of 32
    q_kt = (heads * n * hd * n, 2 * (head_out + head_out + scores))  # q [2, 17, 16] · kᵀ [2, 16, 17]: MACs
    softmax = (5 * scores, 2 * (scores + scores))
    attn_v = (heads * n * n * hd, 2 * (scores + head_out + head_out))  # [2, 17, 17] · v [2, 17, 16]
    block = [("LayerNormalization", layer_norm), ("MatMul", q_kt), ("Softmax", softmax), ("MatMul", attn_v),
             ("LayerNormalization", layer_norm)]
    final = ("LayerNormalization", (7 * dim + 5, 2 * (dim + dim)))  # on the class token alone
    expected = block * 2 + [final]
    assert q_kt[0] == attn_v[0] == 9248 and layer_norm[0] == 3893

    snn = tmp_path / "vit.snn.onnx"
    r = CliRunner().invoke(compile_main, [vit_path, "-o", str(snn), "-q"])
    assert r.exit_code == 0, r.output
    info = read_snn_info(load_model(str(snn), static_inputs=False))
    assert [(w.op, (w.dense_ops, w.bookkeeping_ops)) for w in info.wrappers] == expected
    assert info.static_macs == 16 * dim * 3 * 8 * 8  # the patch embedding: 16 patches × 32 outputs × 3·8·8

    out = tmp_path / "run.json"
    T = 3
    r = CliRunner().invoke(run_main, [str(snn), "-T", str(T), "--limit", "4", "--json", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "dense operations per temporal wrapper" in r.output and "neuromorphic share of the work" in r.output
    rep = json.loads(out.read_text())
    assert rep["schema_version"] == 3
    rows = rep["wrappers"]
    assert [(w["op"], (w["dense_ops_per_step"], w["bookkeeping_ops_per_step"])) for w in rows] == expected
    assert [w["dense_ops"] for w in rows] == [T * d + (T - 1) * b for _, (d, b) in expected]
    work = rep["work"]
    dense = sum(T * d + (T - 1) * b for _, (d, b) in expected)
    assert work["dense_ops"] == dense and work["static_macs"] == info.static_macs
    assert work["dense_ops_step_1"] == sum(d for _, (d, _) in expected) == 58573
    assert work["dense_ops_per_later_step"] == sum(d + b for _, (d, b) in expected)
    sops = sum(layer["sops"] for layer in rep["layers"])
    assert work["sops"] == pytest.approx(sops) and sops > 0
    assert work["neuromorphic_share"]["spikes"] == pytest.approx(sops / (sops + dense + info.static_macs))


class _ScaledAttentionScores(torch.nn.Module):
    """q·kᵀ of one attention layer, with SpikeZIP's placement (q quantized, then scaled by d^-½)
    and λ's whose steps are not powers of two, so that where a scale is applied changes the
    float32 result. ``heads`` > 1: the ViT's head permutation before the quantizers; None: one
    head, no permutation (kᵀ is then a Transpose that the MatMul absorbs)."""

    def __init__(self, dim: int = 32, heads: int | None = 2):
        super().__init__()
        from pmsm_compiler.training.activations import PQA

        self.heads, self.head_dim = heads, dim // (heads or 1)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.q_quant = PQA(8, 2.3, -1.0, 7 / 8)
        self.k_quant = PQA(8, 2.7, -1.0, 7 / 8)

    def forward(self, x):  # [B, C, 4, 4] → 16 tokens of C channels
        b = x.shape[0]
        tokens = x.flatten(2).transpose(1, 2)
        if self.heads:
            qkv = self.qkv(tokens).reshape(b, tokens.shape[1], 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k = qkv[0], qkv[1]
        else:
            q, k, _ = self.qkv(tokens).chunk(3, dim=-1)
        q = self.q_quant(q) * self.head_dim ** -0.5
        k = self.k_quant(k)
        return (q @ k.transpose(-2, -1)).flatten(1)


@pytest.fixture(scope="module", params=[2, None], ids=["head-permutation", "one-head"])
def attention_scores_path(request, tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("attn") / "attention_scores.onnx")
    export_onnx(_ScaledAttentionScores(heads=request.param).eval(), path, input_shape=(1, 32, 4, 4))
    return path, request.param


# MatMulScaleFusion is an onnxruntime "extended" rewrite. With the head permutation, in the ANN it
# is pushed through k's quantizer and merged with kᵀ into a Transpose the MatMul cannot absorb, so
# s_k·k is rounded on its own; a neuron op (or a spike count reading k) stops that push, and then
# kᵀ folds into transB and s_k into the FusedMatMul's alpha. Found on a trained ViT (4 of 10,000
# test predictions, docs/training.md). A T = 1 run therefore runs its step in the ANN's form
# (runtime/ann_form_step.py): neurons as the quantizer's ops, counted after onnxruntime's
# optimization. With one head and no permutation both fold kᵀ and s_k: the fix follows
# onnxruntime's decisions on the ANN, not a rule such as "a Transpose after the neuron".
@pytest.mark.parametrize("opt_level", ["disable", "basic", "extended", "all"])
def test_exact_attention_scores_equal_the_plain_anns_bit_for_bit(attention_scores_path, opt_level):
    from pmsm_compiler.pipeline import compile_and_verify

    path, heads = attention_scores_path
    compiled = compile_and_verify(path, "exact", opt_level=opt_level)
    compiled.raise_if_failed("attention_scores.onnx")
    x = np.random.default_rng(0).normal(0, 1, (64, 32, 4, 4)).astype(np.float32)
    ann = make_session(compiled.ann, opt_level).run(None, {"input": x})[0]
    session = SNNSession(compiled.model, opt_level=opt_level)
    snn = session.run_batch(x, 1).mean_outputs
    assert session.ann_form and session.ann_form_note is None
    assert np.array_equal(snn, ann)
    # the step in the neurons' own form: what the fix changes (where the ANN's rewrite crosses k's quantizer)
    usual = SNNSession(compiled.model, opt_level=opt_level, ann_form=False).run_batch(x, 1).mean_outputs
    assert np.array_equal(usual, ann) == (not heads or opt_level in ("disable", "basic"))
