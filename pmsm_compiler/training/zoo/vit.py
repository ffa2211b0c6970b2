"""Vision Transformer (ViT-S by default) with quantizers where SpikeZIP-TF places them.

Plain PyTorch, no timm. Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.i.norm1``, ``blocks.i.attn.qkv``, ``blocks.i.attn.proj``,
``blocks.i.norm2``, ``blocks.i.mlp.fc1``, ``blocks.i.mlp.fc2``, ``norm``, ``head``), so a timm
ReLU ViT checkpoint loads with ``load_state_dict(..., strict=False)`` (only the λ's are missing).

Architecture: patch embedding (Conv2d, kernel = stride = patch), class token, learned position
embedding, ``depth`` pre-norm blocks ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, MLP with a
ReLU (SpikeZIP's ``--act_layer relu``), final LayerNorm, linear head on the class token.
``vit_small`` is ViT-S (dim 384, depth 12, 6 heads, MLP ratio 4). On CIFAR it defaults to 32 px
and patch 4 (64 tokens + the class token). The paper (Table 5) used patch 16, presumably on
images upsampled to 224 px as in SpikeZIP-TF fine-tuning: ``vit_small(image_size=224,
patch_size=16)``.

Quantizer placement (equations.md §8.2, SpikeZIP-TF ``myquan_replace`` / ``QAttention``)
----------------------------------------------------------------------------------------
Per block, in forward order (which is also registration order, so
``pmsm_compiler.training.activations.quantized_activations(model)`` lists them in the order they run)::

    h = Q_sym(norm1(x))                                    norm1_quant
    q, k, v = split(qkv(h))
    q, k, v = Q_sym(q), Q_sym(k), Q_sym(v)                 attn.q_quant, attn.k_quant, attn.v_quant
    q = q · d^-½                                           (after quantizing q, as SpikeZIP does)
    a = Q_asym(softmax(q kᵀ, dim=-1))                      attn.attn_quant
    o = Q_sym(a v)                                         attn.out_quant
    x = x + Q_sym(proj(o))                                 attn.proj_quant
    h = Q_sym(norm2(x))                                    norm2_quant
    x = x + Q_sym(fc2(Q_asym(fc1(h))))                     mlp.act (replaces the ReLU), mlp.fc2_quant

plus ``patch_embed.quant`` (Q_sym after the patch conv, before the class token and the position
embedding are added) and ``norm_quant`` (Q_sym after the final LayerNorm). That is 8 signed and
2 unsigned quantizers per block and 2 more signed ones: ``10·depth + 2`` in all.

The d^-½ scale follows §8.2 exactly: SpikeZIP quantizes q and *then* multiplies it by d^-½
(``q = self.quan_q(q); ...; q = q * self.scale``), so the q quantizer sees the unscaled q and
the scale is a constant factor in front of the q·kᵀ MatMul. In SpikeZIP the MLP is
``fc1 → Q_asym → ReLU``; the ReLU is the identity on Q_asym's non-negative output (SpikeZIP's
SNN wrapper replaces it with Identity), so here Q_asym simply takes the ReLU's place.

Levels: with ``L = act.levels`` (ActivationSpec, default 8), Q_sym has the 2L levels
[−L, L−1] and Q_asym the 2L levels [0, 2L−1]. That is SpikeZIP's ``MyQuan`` with
``level = 2L`` (sym: [−level/2, level/2−1], asym: [0, level−1]); L = 8 gives SpikeZIP's
level 16, the value of paper Table 5. With act="pqa", Q_asym is an unsigned PQA (α = 0,
β = 1, ``levels = 2L−1``: integer range exactly [0, 2L−1]) that converts to a multi-spike AIF
neuron with s_min = 0; with act="qcfs" it is a QCFS module with the same range.

=====================  ==========================  ================================  ======
spot                   act="pqa"                   act="qcfs" (baseline)             λ0
=====================  ==========================  ================================  ======
patch_embed.quant      PQA(L, α=−1, β=(L−1)/L)     QCFS(L): [0, L]                   2
                       k ∈ [−L, L−1], s = λ/L
norm1/norm2/norm_quant same PQA [−L, L−1]          QCFS(L): [0, L]                   4
attn.q/k/v_quant       same PQA [−L, L−1]          QCFS(L): [0, L]                   2
attn.attn_quant        PQA(2L−1, α=0): [0, 2L−1]   QCFS(2L−1): [0, 2L−1]             1
  (softmax probs)      s = λ/(2L−1)
attn.out_quant (a·v)   PQA [−L, L−1]               QCFS(L): [0, L]                   2
attn.proj_quant        PQA [−L, L−1]               QCFS(L): [0, L]                   2
mlp.act (fc1 output)   PQA(2L−1, α=0): [0, 2L−1]   QCFS(2L−1): [0, 2L−1]             2
mlp.fc2_quant          PQA [−L, L−1]               QCFS(L): [0, L]                   2
=====================  ==========================  ================================  ======

λ0 is the clipping bound of each spot (the top of the range is λ for QCFS and λ(L−1)/L for the
signed PQA, the bottom −λ): 4 for LayerNorm outputs (≈ N(0, 1) with the initial affine, ±4σ),
1 for the softmax probabilities (in [0, 1], so a one-hot row is exact), 2 for the linear-layer
outputs. Override any of them with ``lam0={"q": 3.0, ...}``; the keys (``LAMBDA_INIT``) are
patch, norm1, q, k, v, attn (softmax), attn_out, proj, norm2, mlp_act, fc2 and norm (final).
They are only a starting point: λ is learned, and :func:`calibrate_lambdas` re-initializes
every λ from one batch with SpikeZIP's rule (equations.md §8.1). Do that before training from
scratch: with the std-0.02 init, q, k, v are ~0.02·√dim and mostly round to level 0, uniform
attention over 65 tokens (1/65) falls below half a step at λ = 1 and rounds to 0, and a whole
attention branch can start as exact zeros (its λ then gets a zero gradient).

``act="qcfs"``: every spot is a QCFS. The signed spots keep the PQA step λ/L but lose the
negative half of their range. QCFS cannot represent negative values, and LayerNorm outputs,
q, k, v, a·v and the residual-branch outputs are all signed, so this baseline clips about half
of every signed tensor to 0: a known, documented limitation of the QCFS baseline for
transformers, which is what the polarity (α < 0) of PQA addresses. The unsigned spots are the
same as with ``act="pqa"``, so the two models differ only in polarity.

``act="relu"``: no quantizers at all (``nn.Identity`` at every signed spot and after the
softmax, ``nn.ReLU`` in the MLP): the float ReLU ViT (a SpikeZIP teacher).

ActivationSpec fields other than ``kind`` and ``levels`` are not used: ``lam`` and ``alpha`` /
``beta`` are the CNN settings of paper Table 4; for ViT-S the paper kept SpikeZIP-TF's settings
(equations.md §5, "the search was not used"), i.e. the ranges above and per-spot λ0.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from pmsm_compiler.training.activations import PQA, QCFS, ActivationSpec, as_spec, quantized_activations

# spot -> (signed?, λ0); see the module docstring.
QUANTIZER_SPOTS = {
    "patch": (True, 2.0),
    "norm1": (True, 4.0),
    "q": (True, 2.0),
    "k": (True, 2.0),
    "v": (True, 2.0),
    "attn": (False, 1.0),
    "attn_out": (True, 2.0),
    "proj": (True, 2.0),
    "norm2": (True, 4.0),
    "mlp_act": (False, 2.0),
    "fc2": (True, 2.0),
    "norm": (True, 4.0),
}
LAMBDA_INIT = {name: lam for name, (_, lam) in QUANTIZER_SPOTS.items()}


class _Quantizers:
    """Builds the quantizer of each spot from the model's ActivationSpec (see the docstring)."""

    def __init__(self, act: ActivationSpec, lam0: dict | None):
        self.kind = act.kind.lower()
        if self.kind not in ("pqa", "qcfs", "relu"):
            raise ValueError(f"unknown activation {act.kind!r} (expected pqa, qcfs or relu)")
        self.levels = int(act.levels)
        if self.kind != "relu" and self.levels < 2:
            raise ValueError(f"the ViT quantizers need L >= 2 (Q_sym is [-L, L-1]), got L={self.levels}")
        unknown = set(lam0 or {}) - set(LAMBDA_INIT)
        if unknown:
            raise ValueError(f"unknown quantizer spot(s) {sorted(unknown)}; known: {sorted(LAMBDA_INIT)}")
        self.lam0 = {**LAMBDA_INIT, **(lam0 or {})}

    def make(self, spot: str) -> nn.Module:
        signed = QUANTIZER_SPOTS[spot][0]
        lam, L = self.lam0[spot], self.levels
        if self.kind == "relu":
            return nn.Identity() if spot != "mlp_act" else nn.ReLU()
        if not signed:                       # Q_asym: levels [0, 2L-1]
            if self.kind == "pqa":           # unsigned PQA: multi-spike AIF with s_min = 0
                return PQA(levels=2 * L - 1, lam=lam, alpha=0.0, beta=1.0)
            return QCFS(levels=2 * L - 1, lam=lam)
        if self.kind == "pqa":               # Q_sym: levels [-L, L-1]
            return PQA(levels=L, lam=lam, alpha=-1.0, beta=(L - 1) / L)
        return QCFS(levels=L, lam=lam)       # QCFS baseline: levels [0, L]


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample); the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class PatchEmbed(nn.Module):
    """Conv2d(kernel = stride = patch) → Q_sym → tokens [B, N, dim]."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int, quant: _Quantizers):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.quant = quant.make("patch")

    def forward(self, x):
        return self.quant(self.proj(x)).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention written out (MatMul, Softmax), with SpikeZIP's quantizers."""

    def __init__(self, dim: int, num_heads: int, quant: _Quantizers, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_quant = quant.make("q")
        self.k_quant = quant.make("k")
        self.v_quant = quant.make("v")
        self.attn_quant = quant.make("attn")
        self.out_quant = quant.make("attn_out")
        self.proj = nn.Linear(dim, dim)
        self.proj_quant = quant.make("proj")

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                  # each [B, heads, N, head_dim]
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)
        q = q * self.scale                                       # after Q(q), as in SpikeZIP
        attn = torch.matmul(q, k.transpose(-2, -1)).softmax(dim=-1)
        attn = self.attn_quant(attn)
        out = self.out_quant(torch.matmul(attn, v))
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_quant(self.proj(out))


class Mlp(nn.Module):
    """fc1 → Q_asym (in place of the ReLU) → fc2 → Q_sym."""

    def __init__(self, dim: int, hidden: int, quant: _Quantizers):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = quant.make("mlp_act")
        self.fc2 = nn.Linear(hidden, dim)
        self.fc2_quant = quant.make("fc2")

    def forward(self, x):
        return self.fc2_quant(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(Q(norm1(x))), then x + mlp(Q(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, quant: _Quantizers,
                 qkv_bias: bool = True, drop_path: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm1_quant = quant.make("norm1")
        self.attn = Attention(dim, num_heads, quant, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.norm2_quant = quant.make("norm2")
        self.mlp = Mlp(dim, int(dim * mlp_ratio), quant)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1_quant(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2_quant(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT with a class token, learned position embedding and SpikeZIP-placed quantizers.

    ``act``: "pqa", "qcfs", "relu", a dict or an ActivationSpec (only ``kind`` and ``levels`` are
    used). ``lam0``: per-spot λ0 overrides (keys of ``LAMBDA_INIT``). ``drop_path_rate``: maximum
    stochastic depth, linearly increasing over the blocks (paper Table 5: 0.1; default 0).
    """

    def __init__(self, image_size: int = 32, patch_size: int = 4, in_channels: int = 3,
                 num_classes: int = 10, dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, act="pqa", qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 lam0: dict | None = None):
        super().__init__()
        spec = as_spec(act)
        quant = _Quantizers(spec, lam0)
        self.act_kind = quant.kind
        self.levels = quant.levels
        self.dim, self.depth, self.num_heads = dim, depth, num_heads
        self.patch_size, self.image_size = patch_size, image_size
        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, dim, quant)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, quant, qkv_bias, rates[i])
                                      for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.norm_quant = quant.make("norm")
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self):
        # timm's ViT init: truncated normal (std 0.02) for the embeddings and Linear weights,
        # zero biases, LayerNorm (1, 0); the patch Conv2d keeps PyTorch's default.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        return self.blocks(x)

    def forward(self, x):
        x = self.forward_features(x)
        # LayerNorm and Q act per token / per element, so taking the class token first is the
        # same as norm(x)[:, 0] and skips the other N tokens.
        x = self.norm_quant(self.norm(x[:, 0]))
        return self.head(x)


@torch.no_grad()
def calibrate_lambdas(model: nn.Module, x: torch.Tensor) -> dict:
    """Set every quantizer's λ from one batch, with SpikeZIP-TF's step init (equations.md §8.1).

    SpikeZIP initializes the step as s = 2·mean|x| / sqrt(n_max) (n_max = the top level) on the
    first training batch; here s = λ/levels, so λ = levels · 2·mean|x| / sqrt(k_max), with mean|x|
    taken over the quantizer's input. The pre-hooks run in forward order within one forward pass,
    so each quantizer is calibrated on the outputs of the already calibrated ones before it.
    Returns {name: new λ}.
    """
    result = {}

    def hook(name):
        def set_lambda(q, inputs):
            mean_abs = float(inputs[0].abs().mean())
            if mean_abs > 0 and math.isfinite(mean_abs):
                q.lam.fill_(q.levels * 2.0 * mean_abs / math.sqrt(q.k_max))
            result[name] = float(q.lam)
        return set_lambda

    was_training = model.training
    model.eval()
    handles = [q.register_forward_pre_hook(hook(name)) for name, q in quantized_activations(model)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return result


def vit_small(num_classes: int = 10, act="pqa", image_size: int = 32, patch_size: int = 4,
              **kw) -> VisionTransformer:
    """ViT-S: dim 384, depth 12, 6 heads, MLP ratio 4 (about 21.3M parameters at 32 px / patch 4).

    The paper used patch 16 (Table 5), presumably at 224 px: ``vit_small(image_size=224, patch_size=16)``.
    """
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_classes=num_classes,
                             dim=384, depth=12, num_heads=6, mlp_ratio=4.0, act=act, **kw)


def vit_cifar(num_classes: int = 10, act="pqa", image_size: int = 32, patch_size: int = 4,
              drop_path_rate: float = 0.1, **kw) -> VisionTransformer:
    """A ViT for CIFAR-10 from scratch on a CPU: dim 192, depth 6, 3 heads, MLP ratio 2 (1.8M parameters).

    Patch 4 keeps 64 tokens (patch 8 leaves 16, too coarse for 32 px); dim 192 with 3 heads of 64
    is DeiT-Ti's width; depth 6 and MLP ratio 2 as the ViT-Lite models that reach about 90 % on
    CIFAR-10 from scratch (Hassani et al. 2021), at a third of DeiT-Ti's cost per image, so that an
    epoch takes minutes on a 2-core CPU; stochastic depth 0.1 as DeiT-Ti.
    """
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_classes=num_classes,
                             dim=192, depth=6, num_heads=3, mlp_ratio=2.0, act=act,
                             drop_path_rate=drop_path_rate, **kw)


def vit_tiny(num_classes: int = 10, act="pqa", image_size: int = 32, patch_size: int = 8,
             **kw) -> VisionTransformer:
    """Same structure at a fraction of the size (dim 32, depth 2, 2 heads, MLP ratio 2), for fast tests."""
    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_classes=num_classes,
                             dim=32, depth=2, num_heads=2, mlp_ratio=2.0, act=act, **kw)
