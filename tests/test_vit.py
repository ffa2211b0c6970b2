"""ViT with SpikeZIP-TF quantizer placement (pmsm_compiler/training/zoo/vit.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402

from pmsm_compiler.training.activations import PQA, QCFS, quantized_activations  # noqa: E402
from pmsm_compiler.training.zoo import build_model  # noqa: E402
from pmsm_compiler.training.zoo.vit import LAMBDA_INIT, calibrate_lambdas  # noqa: E402

L = 8
SIGNED_PER_BLOCK = ["norm1_quant", "attn.q_quant", "attn.k_quant", "attn.v_quant", "attn.out_quant",
                    "attn.proj_quant", "norm2_quant", "mlp.fc2_quant"]
UNSIGNED_PER_BLOCK = ["attn.attn_quant", "mlp.act"]
# forward order within a block
BLOCK_ORDER = ["norm1_quant", "attn.q_quant", "attn.k_quant", "attn.v_quant", "attn.attn_quant",
               "attn.out_quant", "attn.proj_quant", "norm2_quant", "mlp.act", "mlp.fc2_quant"]


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # one thread: on a busy 2-core machine torch's worker threads contend and steps get 50x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _tiny(act="pqa", **kw):
    return build_model("vit_tiny", num_classes=10, act=act, **kw)


def _batch(n=4):
    return torch.randn(n, 3, 32, 32)


def _lam(q):
    return float(q.lam.detach())


def _trained_like(net):
    """Larger q/k/v weights than the std-0.02 init, so that attention is far from uniform, then
    SpikeZIP's λ calibration: every quantizer then uses many of its levels."""
    with torch.no_grad():
        for block in net.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=0.4)
    calibrate_lambdas(net, _batch(8))
    return net


def _expected_names(depth):
    names = ["patch_embed.quant"]
    for i in range(depth):
        names += [f"blocks.{i}.{n}" for n in BLOCK_ORDER]
    return names + ["norm_quant"]


@pytest.mark.parametrize("act", ["pqa", "qcfs", "relu"])
def test_forward_shape(act):
    net = _tiny(act)
    assert net(_batch(3)).shape == (3, 10)
    assert build_model("vit_tiny", num_classes=7, act=act)(_batch(2)).shape == (2, 7)


def test_quantizers_pqa():
    net = _tiny("pqa")
    quants = dict(quantized_activations(net))
    assert list(quants) == _expected_names(net.depth)           # registration order = forward order
    assert len(quants) == 10 * net.depth + 2
    signed = ["patch_embed.quant", "norm_quant"] + [f"blocks.{i}.{n}" for i in range(net.depth)
                                                    for n in SIGNED_PER_BLOCK]
    unsigned = [f"blocks.{i}.{n}" for i in range(net.depth) for n in UNSIGNED_PER_BLOCK]
    for name in signed:                                          # Q_sym: PQA, levels [-L, L-1]
        q = quants[name]
        assert type(q) is PQA and (q.levels, q.k_min, q.k_max) == (L, -L, L - 1), name
    for name in unsigned:                                        # Q_asym: levels [0, 2L-1]
        q = quants[name]
        # unsigned PQA (alpha = 0): converts to a multi-spike AIF neuron, not QCFS's binary IF
        assert type(q) is PQA and (q.levels, q.k_min, q.k_max) == (2 * L - 1, 0, 2 * L - 1), name
    assert sum(type(q) is PQA for q in quants.values()) == 10 * net.depth + 2
    assert not any(type(q) is QCFS for q in quants.values())
    # λ0 per spot
    assert _lam(quants["blocks.0.attn.attn_quant"]) == LAMBDA_INIT["attn"] == 1.0
    assert _lam(quants["blocks.1.norm2_quant"]) == LAMBDA_INIT["norm2"]
    assert _lam(quants["blocks.0.mlp.act"]) == LAMBDA_INIT["mlp_act"]


def test_quantizers_qcfs_and_levels():
    net = _tiny("qcfs")
    quants = dict(quantized_activations(net))
    assert list(quants) == _expected_names(net.depth)
    assert all(type(q) is QCFS and q.k_min == 0 for q in quants.values())
    unsigned = {f"blocks.{i}.{n}" for i in range(net.depth) for n in UNSIGNED_PER_BLOCK}
    for name, q in quants.items():
        assert q.k_max == (2 * L - 1 if name in unsigned else L), name
    # L comes from the ActivationSpec
    net4 = _tiny({"kind": "pqa", "levels": 4})
    assert {(q.k_min, q.k_max) for _, q in quantized_activations(net4)} == {(-4, 3), (0, 7)}


def test_relu_has_no_quantizers():
    net = _tiny("relu")
    assert quantized_activations(net) == []
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == net.depth
    assert isinstance(net.blocks[0].attn.q_quant, nn.Identity)
    assert isinstance(net.norm_quant, nn.Identity)


def test_lam0_override_and_errors():
    net = _tiny("pqa", lam0={"q": 3.0})
    assert _lam(net.blocks[1].attn.q_quant) == 3.0
    assert _lam(net.blocks[1].attn.k_quant) == LAMBDA_INIT["k"]
    with pytest.raises(ValueError, match="unknown quantizer spot"):
        _tiny("pqa", lam0={"nope": 1.0})
    with pytest.raises(ValueError, match="unknown activation"):
        _tiny("gelu")
    with pytest.raises(ValueError, match="multiple"):
        build_model("vit_tiny", act="relu", image_size=30)


def test_vit_small_structure():
    net = build_model("vit_s", num_classes=10, act="pqa")
    assert (net.dim, net.depth, net.num_heads) == (384, 12, 6)
    assert len(net.blocks) == 12 and net.blocks[0].attn.num_heads == 6
    assert net.blocks[0].mlp.fc1.out_features == 4 * 384
    assert net.patch_embed.num_patches == 64 and net.pos_embed.shape == (1, 65, 384)
    n_params = sum(p.numel() for p in net.parameters())
    assert 21e6 < n_params < 22e6
    assert len(quantized_activations(net)) == 10 * 12 + 2
    with torch.no_grad():
        assert net.eval()(_batch(1)).shape == (1, 10)


def _record_outputs(net):
    outs, handles = [], []
    for name, q in quantized_activations(net):
        handles.append(q.register_forward_hook(lambda m, _i, y, name=name: outs.append((name, m, y.detach()))))
    return outs, handles


def test_pqa_outputs_on_grid():
    net = _trained_like(_tiny("pqa"))
    outs, handles = _record_outputs(net)
    net(_batch(4))
    for h in handles:
        h.remove()
    assert [name for name, _, _ in outs] == _expected_names(net.depth)   # hooks fire in this order
    saw_negative = False
    for name, q, y in outs:
        k = y / (q.lam.detach() / q.levels)
        assert torch.allclose(k, torch.round(k), atol=1e-3), name
        k = torch.round(k)
        assert int(k.min()) >= q.k_min and int(k.max()) <= q.k_max, name
        assert torch.equal(q.levels_of(y), k), name
        assert len(torch.unique(k)) > 1, name                 # not collapsed to a single level
        saw_negative |= bool((k < 0).any()) and isinstance(q, PQA)
    assert saw_negative


def test_calibrate_lambdas():
    net = _tiny("pqa")
    lams = calibrate_lambdas(net, _batch(8))
    assert list(lams) == _expected_names(net.depth)
    assert all(v > 0 for v in lams.values())
    # SpikeZIP's rule: LayerNorm outputs ~ N(0,1), mean|x| ≈ 0.8, λ = 8·2·0.8/√7 ≈ 4.8
    assert 4.0 < lams["blocks.0.norm1_quant"] < 5.6


@pytest.mark.parametrize("act", ["pqa", "qcfs"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_backward_reaches_every_lambda(act, calibrated):
    net = _tiny(act)
    if calibrated:
        _trained_like(net)
    loss = nn.functional.cross_entropy(net(_batch(4)), torch.arange(4))
    loss.backward()
    for name, q in quantized_activations(net):
        assert q.lam.grad is not None and torch.isfinite(q.lam.grad), name
        if calibrated:
            # with the default λ0 and the std-0.02 init, a branch can be all zeros at first
            # (its λ then gets an exact 0), so "nonzero" is checked on the calibrated model
            assert float(q.lam.grad) != 0.0, name
    assert net.patch_embed.proj.weight.grad.abs().sum() > 0
    assert net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("act", ["pqa", "qcfs", "relu"])
def test_sgd_reduces_loss(act):
    net = _tiny(act)
    x, y = _batch(8), torch.arange(8) % 10
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(net(x), y))
    assert final < losses[0] - 0.1, (losses, final)
