"""Training with PQA / QCFS / ReLU (paper Table 4 defaults), checkpoint/resume, DDP, ONNX export.

Defaults (PMSM Table 4, QCFS ``main_train.py``): SGD momentum 0.9, lr 0.1, weight decay 5e-4 on
all parameters (λ included, as in QCFS), cosine schedule over the planned epochs, batch 300,
seed 42, L = 8, λ0 = 8, α = −0.25, β = 1. Augmentation: random crop (pad 4) and horizontal flip,
applied to whole batches (per-sample Python loops cost more than the network on a CPU).

Under ``torchrun`` (WORLD_SIZE > 1) the same command runs DistributedDataParallel: each rank
takes a disjoint shard of every epoch's permutation; rank 0 logs, checkpoints and exports.

Fine-tuning: ``init_from`` loads the weights of another run's checkpoint (a float ReLU network, or
an earlier quantized run) before the first step; every λ the checkpoint lacks starts at ``lam``,
and the schedule starts afresh (the epochs count the fine-tuning only). Measured on ResNet-20
(docs/training.md): a ReLU network converts well to QCFS, but PQA's negative range [αλ, 0)
passes what the ReLU zeroed, so PQA fine-tuned from ReLU starts far below the float accuracy and
trails a PQA network trained from scratch. A float pre-training with PQA's own range
(``act="clip"``, y = clip(x, αλ, βλ), ``activations.ClipFloat``) does not have that problem: its
λ is handed over with the weights, and quantizing it only rounds to steps of λ/L. On ResNet-20 at
a 41-epoch budget (26 float + 15 fine-tuning) it did not beat PQA from scratch (docs/training.md).

Distillation: ``distill_from`` names a trained checkpoint (for instance the dense model a sparse
fine-tune starts from) whose logits teach the student (Hinton et al. 2015): the loss becomes
(1 − w)·CE(student, labels) + w·τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)), with
w = ``distill_weight`` and τ = ``distill_temperature``. The teacher is the same zoo model, with the
activation of its checkpoint's config (PQA defaults when the checkpoint has none, as one rebuilt from
ONNX by bench/checkpoint_from_onnx.py), run in eval mode without gradients; it costs one forward
pass per step. A spike-penalized fine-tune loses accuracy mostly to the penalty pulling levels off
where the dense network had them; the teacher's soft targets keep the function close.

ViTs from scratch (``optimizer="adamw"``, ``label_smoothing``, ``mixup``, ``cutmix``): a
transformer trained on CIFAR-10's 50k images overfits with SGD and crop/flip alone; the DeiT recipe
(AdamW with decay on weight matrices only, warm-up, label smoothing, MixUp/CutMix, stochastic depth
in the model) is what works at small data (docs/training.md).

Checkpoints: ``checkpoint.pt`` each epoch (weights, optimizer state, history), from which a resumed
run continues bit for bit. A run whose checkpoint is too large to commit (a ViT's, with its AdamW
state) also writes ``checkpoint.compact.pt`` with ``compact_checkpoint``: float16 weights, no
optimizer state (a quarter of the size). A folder with only the compact one resumes from it: the
optimizer restarts with its learning rate ramped over ``COMPACT_RESUME_RAMP_STEPS`` steps, so the
run continues close to, not exactly on, its uninterrupted trajectory.

Weight averaging (``ema``, weight_average.py): the run delivers an exponential moving average of
its weights (BatchNorm statistics and λ included): the checkpoint's ``model`` entry, every test
evaluation (``test_acc``; the trained weights' own accuracy is logged beside it as ``test_acc_live``)
and model.onnx are the average's; the trained weights (``LIVE_WEIGHTS``) and the number of averaged
steps are kept too, so a resumed run continues both exactly.

Memory format: channels_last (faster on a CPU), except for a model with a layer that torch 2.13's
oneDNN cannot differentiate in that format (``channels_last_hazard``), which trains in NCHW.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pmsm_compiler.defaults import (COMPACT_CHECKPOINT, COMPACT_RESUME_RAMP_STEPS, DISTILL_TEMPERATURE,
                                    DISTILL_WEIGHT, PQA_ALPHA, PQA_BETA, PQA_LAMBDA, PQA_LEVELS)
from pmsm_compiler.files import save_text_atomic, write_atomic
from pmsm_compiler.training.activations import ActivationSpec, quantized_activations


LOG_COMMAND = "command: "
LOG_RESUMED = "resumed from "
# With a weight average, a checkpoint's "model" entry holds the average (what every consumer of a checkpoint
# loads: --init-from, a teacher, pmsm-export, ship_model) and this entry the trained weights, to resume from.
LIVE_WEIGHTS = "live_model"
AVERAGED_STEPS = "ema_steps"  # how many optimizer steps the average has taken in, for an exact resume


def command_log_line(argv: list[str]) -> str:
    """train.log's first line of a session: the command, shell-quoted so that it splits back."""
    return LOG_COMMAND + shlex.join([os.path.basename(argv[0])] + list(argv[1:]))


def read_train_log(run_dir: str) -> list[dict]:
    """The sessions that trained a run, from its train.log: each one's command and start epoch.

    Each session logs its ``command:`` line, then, if it resumed a checkpoint, ``resumed from ...
    at epoch N``. A folder without a train.log has no sessions.
    """
    sessions = []
    log = os.path.join(run_dir, "train.log")
    if os.path.isfile(log):
        with open(log) as f:
            for line in f:
                if line.startswith(LOG_COMMAND):
                    sessions.append({"command": line[len(LOG_COMMAND):].strip(), "from_epoch": 0})
                elif line.startswith(LOG_RESUMED) and sessions:
                    sessions[-1]["from_epoch"] = int(line.rsplit("at epoch", 1)[1])
    return sessions


@dataclass
class TrainConfig:
    model: str = "resnet20"
    act: str = "pqa"
    levels: int = PQA_LEVELS
    lam: float = PQA_LAMBDA
    alpha: float = PQA_ALPHA
    beta: float = PQA_BETA
    epochs: int = 600
    batch_size: int = 300
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    seed: int = 42
    num_classes: int = 10
    dataset: str = "cifar10"
    threads: int = 0
    channels_last: bool = True
    max_steps: int = 0  # stop after this many steps (0: no limit); for tests and smoke runs
    eval_every: int = 1  # test-set evaluation every N epochs, and always after the last one
    init_from: str = ""  # checkpoint whose weights start the run (fine-tuning); "" = from scratch
    spike_penalty: float = 0.0  # weight of the mean spike cost per neuron and image (spike_cost.py)
    penalty_rule: str = "spikes"  # "spikes" (Σ|k|) or "events" (Σ 1[k ≠ 0])
    distill_from: str = ""  # teacher checkpoint for knowledge distillation; "" = none
    distill_weight: float = DISTILL_WEIGHT  # w: share of the distillation term in the loss
    distill_temperature: float = DISTILL_TEMPERATURE  # τ: softmax temperature of both logits
    optimizer: str = "sgd"  # "sgd" (the paper's) or "adamw" (for ViTs from scratch)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(a, a) of MixUp; 0 = off
    cutmix: float = 0.0  # Beta(a, a) of CutMix; 0 = off (both on: one of the two per batch, as DeiT)
    # activations whose levels run shifted (comma-separated names; pmsm_compiler.training.level_shift)
    level_shift: str = ""
    # also write COMPACT_CHECKPOINT each epoch; it does not shape the trajectory, so it is not compared on resume
    compact_checkpoint: bool = False
    # decay of the weight average the run delivers (weight_average.py); 0 = the last weights
    ema: float = 0.0
    extra: dict = field(default_factory=dict)

    def act_spec(self) -> ActivationSpec:
        return ActivationSpec(self.act, self.levels, self.lam, self.alpha, self.beta)


# ------------------------------------------------------------------------------------------------
# Data on tensors: uint8 NHWC in memory, augmentation per batch
# ------------------------------------------------------------------------------------------------

class BatchAugmenter:
    """Random crop with zero padding and horizontal flip, for a whole uint8 NHWC batch at once."""

    def __init__(self, pad: int = 4, flip: bool = True):
        self.pad, self.flip = pad, flip

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, h, w, _ = x.shape
        p = self.pad
        if p:
            xp = F.pad(x, (0, 0, p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            ox = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = (oy[:, None] + torch.arange(h))[:, :, None]
            cols = (ox[:, None] + torch.arange(w))[:, None, :]
            x = xp[torch.arange(n)[:, None, None], rows, cols]
        if self.flip:
            flip = torch.rand(n, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(2), x)
        return x


class BatchMixer:
    """MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a whole normalized batch.

    Each batch mixes with its own permutation: MixUp x' = m·x + (1 − m)·x[π]; CutMix pastes a box
    of x[π] covering a share 1 − m of the image (m recomputed from the clipped box). m ~ Beta(a, a).
    With both on, each batch uses one of the two with probability 1/2 (DeiT's recipe). The loss is
    m·CE(y) + (1 − m)·CE(y[π]). A ViT trained from scratch on 50k images overfits without such
    regularization; a ResNet does not need it. Random draws come from a numpy generator seeded per
    epoch, so a resumed run mixes as the uninterrupted one.
    """

    def __init__(self, mixup: float, cutmix: float):
        self.mixup, self.cutmix = mixup, cutmix

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
        n, _, h, w = x.shape
        perm = torch.from_numpy(rng.permutation(n))
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        if use_cutmix:
            m = float(rng.beta(self.cutmix, self.cutmix))
            ch, cw = int(h * math.sqrt(1 - m)), int(w * math.sqrt(1 - m))
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]  # only the box of the partners, not whole images
            m = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            m = float(rng.beta(self.mixup, self.mixup))
            x = m * x + (1.0 - m) * x[perm]
        return x, y, y[perm], m


def build_optimizer(model: nn.Module, cfg: "TrainConfig") -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (λ included, as QCFS), or AdamW with
    weight decay on the weight matrices only (biases, norms, λ, embeddings of shape [1, n, d] are
    not decayed, as timm/DeiT do): decaying a ViT's LayerNorm gains or position embedding hurts."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (decay if p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token")) else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")


class Normalizer(nn.Module):
    """uint8 NHWC -> float32 NCHW, (x/255 − mean)/std, the op order of pmsm_compiler.data.normalize."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
        x = x_uint8_nhwc.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std


def cosine_lr(base_lr: float, epoch_float: float, epochs: int, warmup: int = 0) -> float:
    if warmup and epoch_float < warmup:
        return base_lr * (epoch_float + 1e-3) / warmup
    t = (epoch_float - warmup) / max(1e-9, epochs - warmup)
    return 0.5 * base_lr * (1 + math.cos(math.pi * min(1.0, t)))


# ------------------------------------------------------------------------------------------------
# Starting from another run's weights (fine-tuning)
# ------------------------------------------------------------------------------------------------

def read_checkpoint(path: str, flag: str):
    """A checkpoint file's contents; a missing or unreadable file is a one-line error naming ``flag``."""
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{flag}: {path} is not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def load_init_weights(model: nn.Module, path: str) -> dict:
    """Copy the weights of checkpoint ``path`` into ``model`` (fine-tuning from another run).

    ``path`` is a pmsm-train ``checkpoint.pt`` (its ``model`` entry) or a plain state dict. Every
    tensor of ``model`` must come from the checkpoint with the same shape, except the λ of the
    quantized activations, which a float (ReLU) network does not have; a checkpoint tensor that
    ``model`` has no place for is an error too, so that a different architecture is refused
    rather than half-loaded. Returns {"loaded": n, "kept_initial": [λ names]}.
    """
    state = read_checkpoint(path, "--init-from")
    source = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(source, dict) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ValueError(f"--init-from: {path} holds no state dict (expected a pmsm-train checkpoint.pt)")
    own = model.state_dict()
    lam_names = {f"{name}.lam" for name, _ in quantized_activations(model)}
    missing = sorted(k for k in own if k not in source and k not in lam_names)
    unexpected = sorted(k for k in source if k not in own)
    wrong = sorted(k for k in own if k in source and tuple(source[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the model has no place for (first: {unexpected[0]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es) (first: {wrong[0]}: {tuple(source[wrong[0]].shape)} "
                        f"vs {tuple(own[wrong[0]].shape)})")
    if problems:
        raise ValueError(f"--init-from: {path} does not fit this model: " + "; ".join(problems))
    kept = sorted(k for k in lam_names if k not in source)
    with torch.no_grad():
        for k, v in source.items():
            own[k].copy_(v)
    return {"loaded": len(source), "kept_initial": kept, "level_shift": checkpoint_level_shift(state)}


def model_for_config(config: dict) -> nn.Module:
    """The zoo model a pmsm-train configuration (a checkpoint's ``config``) trains: its model, number of
    classes, activation and level shift. A checkpoint's weights load only into this: a level-shifted
    block has the tensors of a plain one but computes another function without its shift."""
    from pmsm_compiler.training.level_shift import apply_level_shift, parse_layers
    from pmsm_compiler.training.zoo import build_model

    defaults = TrainConfig()
    get = lambda key: config.get(key, getattr(defaults, key))  # noqa: E731
    spec = ActivationSpec(get("act"), get("levels"), get("lam"), get("alpha"), get("beta"))
    model = build_model(get("model"), num_classes=get("num_classes"), act=spec)
    apply_level_shift(model, parse_layers(get("level_shift")))
    return model


def checkpoint_level_shift(state) -> list[str]:
    """The activations a pmsm-train checkpoint ran level-shifted (none for a plain state dict)."""
    from pmsm_compiler.training.level_shift import parse_layers

    saved = state.get("config") if isinstance(state, dict) else None
    return parse_layers(saved.get("level_shift", "")) if isinstance(saved, dict) else []


def load_teacher(cfg: "TrainConfig", path: str, device, memory_format) -> nn.Module:
    """The distillation teacher: ``cfg.model`` with the activation its checkpoint was trained with.

    A checkpoint without a config (a plain state dict, or one rebuilt from ONNX) gets the PQA
    defaults; its λ come from the checkpoint. Frozen, in eval mode.
    """
    state = read_checkpoint(path, "--distill-from")
    saved = state.get("config") if isinstance(state, dict) else None
    # the student's model; the teacher's own activation and level shift (PQA defaults without a config)
    teacher = model_for_config({**(saved if isinstance(saved, dict) else {}), "model": cfg.model,
                                "num_classes": cfg.num_classes})
    try:
        load_init_weights(teacher, path)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--init-from", "--distill-from")) from None
    teacher = teacher.to(device, memory_format=memory_format).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss(ce: torch.Tensor, logits: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:
    """(1 − w)·CE + w·τ²·KL(softmax(teacher/τ) ‖ softmax(student/τ)) (Hinton et al. 2015).

    τ² keeps the soft term's gradient on the scale of the hard one as τ changes.
    """
    kl = F.kl_div(F.log_softmax(logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return (1.0 - weight) * ce + weight * temperature * temperature * kl


# ------------------------------------------------------------------------------------------------

def channels_last_hazard(model: nn.Module) -> str:
    """Why ``model`` must not train in channels_last on a CPU, or "" when it may.

    torch 2.13's oneDNN (3.12) crashes, on an AMD EPYC with AVX2 at least, in the weight gradient
    of a channels_last 1×1 convolution with stride > 1 and 2 to 7 input channels: a segmentation
    fault or abort at one thread; at two, some runs hang (bench/onednn_channels_last.py,
    2026-12-02; 1 and 8+ channels, stride 1, 3×3 and NCHW are fine). The zoo's full-size models have no such layer; the tiny
    test models' shortcut convolutions (4 → 8 channels, stride 2) do.
    """
    for name, module in model.named_modules():
        if (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
                and max(module.stride) > 1 and 1 < module.in_channels // module.groups < 8):
            return (f"{name}: a 1×1 stride-{max(module.stride)} convolution with {module.in_channels} input "
                    "channels, whose channels_last weight gradient crashes oneDNN on some CPUs")
    return ""


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: Normalizer, device,
             batch_size: int = 1000, channels_last: bool = False) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = norm(x[i:i + batch_size].to(device))
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            correct += (model(xb).argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / max(1, len(x))


def train(cfg: TrainConfig, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray | None,
          test_y: np.ndarray | None, out_dir: str, mean, std, resume: bool = True, progress: bool = True,
          log=print) -> dict:
    """Train ``cfg.model`` on uint8 NHWC arrays; checkpoint to ``out_dir/checkpoint.pt`` each epoch
    (and to ``COMPACT_CHECKPOINT`` with ``cfg.compact_checkpoint``), resuming from either.

    Returns a summary dict (also written to ``out_dir/summary.json``).
    """
    world, rank, local_rank = _dist_info()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    is_main = rank == 0
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    from pmsm_compiler.training.level_shift import parse_layers

    model = model_for_config(asdict(cfg)).to(device)
    shifted = parse_layers(cfg.level_shift)
    channels_last = cfg.channels_last
    if channels_last and device.type == "cpu":
        hazard = channels_last_hazard(model)
        if hazard:
            channels_last = False
            if is_main:
                log(f"training in NCHW, not channels_last: {hazard}")
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    norm = Normalizer(mean, std).to(device)
    start_epoch, history, wall = 0, [], 0.0
    compact_path = os.path.join(out_dir, COMPACT_CHECKPOINT)
    ramp_steps = 0  # > 0 after resuming from a compact checkpoint (its optimizer state restarts)
    resumed_average = None  # (state, steps) of the weight average a resumed run had
    resume_from = ckpt_path if os.path.exists(ckpt_path) else compact_path if os.path.exists(compact_path) else ""
    if resume and resume_from:
        state = torch.load(resume_from, map_location=device, weights_only=False)
        saved_cfg = state["config"]
        # Everything that shapes the trajectory must match; threads, max_steps and eval_every may change.
        for key in ("model", "act", "levels", "lam", "alpha", "beta", "epochs", "batch_size", "lr", "momentum",
                    "weight_decay", "warmup_epochs", "seed", "num_classes", "dataset", "channels_last",
                    "init_from", "spike_penalty", "penalty_rule", "distill_from", "distill_weight",
                    "distill_temperature", "optimizer", "label_smoothing", "mixup", "cutmix", "level_shift", "ema"):
            if saved_cfg.get(key, getattr(TrainConfig(), key)) != getattr(cfg, key):
                raise ValueError(f"checkpoint {resume_from} was made with {key}={saved_cfg.get(key)!r}, "
                                 f"not {getattr(cfg, key)!r}; use another --out or --no-resume")
        live = state.get(LIVE_WEIGHTS, state["model"])  # with a weight average, "model" holds the average
        if "optimizer" in state:
            model.load_state_dict(live)
            optimizer.load_state_dict(state["optimizer"])
        else:  # compact: float16 weights back to each parameter's own dtype, a fresh optimizer
            own = model.state_dict()
            model.load_state_dict({k: v.to(own[k].dtype) for k, v in live.items()})
            ramp_steps = COMPACT_RESUME_RAMP_STEPS
        if cfg.ema:
            resumed_average = (state["model"], state[AVERAGED_STEPS])
        start_epoch, history, wall = state["epoch"], state["history"], state.get("wall_s", 0.0)
        if is_main:
            log(f"{LOG_RESUMED}{resume_from} at epoch {start_epoch}")
            if ramp_steps:
                log(f"the compact checkpoint holds float16 weights and no optimizer state: the {cfg.optimizer} "
                    f"state restarts, its learning rate ramped over {ramp_steps} steps (not bit for bit the "
                    f"uninterrupted run)")
    lambdas_loaded = False
    if start_epoch == 0 and cfg.init_from:
        loaded = load_init_weights(model, cfg.init_from)
        lambdas_loaded = not loaded["kept_initial"]
        extra = [n for n in loaded["level_shift"] if n not in shifted]
        if extra:
            raise ValueError(f"--init-from: {cfg.init_from} ran {', '.join(extra)} level-shifted; this run does not "
                             f"shift them (--level-shift)")
        adopted = [n for n in shifted if n not in loaded["level_shift"]]
        if adopted:  # weights trained unshifted: the block's BatchNorm mean takes the constant (level_shift.py)
            from pmsm_compiler.training.level_shift import adopt_unshifted_statistics

            adopt_unshifted_statistics(model, adopted)
        if is_main:
            log(f"initialized from {cfg.init_from}: {loaded['loaded']} tensors"
                + (f"; λ not in the checkpoint: {len(loaded['kept_initial'])}" if loaded["kept_initial"] else "")
                + (f"; level shift applied to {len(adopted)} layers trained unshifted" if adopted else ""))
    if start_epoch == 0 and cfg.model.startswith("vit") and cfg.act != "relu" and not lambdas_loaded:
        # SpikeZIP-TF initialises every quantizer step on the first training batch; with fixed λ0
        # an untrained ViT rounds whole attention branches to zero (pmsm_compiler/training/zoo/vit.py).
        from pmsm_compiler.training.zoo.vit import calibrate_lambdas

        first = norm(torch.from_numpy(np.ascontiguousarray(train_x[:cfg.batch_size])).to(device))
        calibrate_lambdas(model, first.contiguous(memory_format=memory_format))
    average = None
    if cfg.ema:  # after --init-from and a level shift's adoption: the average starts from what training starts from
        from pmsm_compiler.training.weight_average import WeightAverage

        average = WeightAverage(model, cfg.ema, *(resumed_average or ()))
    quantizers = [m for _, m in quantized_activations(model)]
    penalized = cfg.spike_penalty > 0
    if penalized:
        from pmsm_compiler.training.spike_cost import collect_spike_cost, set_spike_cost

        if not set_spike_cost(model, cfg.penalty_rule):
            raise ValueError("--spike-penalty needs a model with quantized activations (pqa or qcfs)")
    teacher = None
    if cfg.distill_from:
        teacher = load_teacher(cfg, cfg.distill_from, device, memory_format)
        if is_main:
            log(f"distilling from {cfg.distill_from} (w={cfg.distill_weight}, τ={cfg.distill_temperature})")
    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    xs = torch.from_numpy(np.ascontiguousarray(train_x))
    ys = torch.from_numpy(np.asarray(train_y).astype(np.int64))
    aug = BatchAugmenter()
    mixer = BatchMixer(cfg.mixup, cfg.cutmix)
    n = len(xs)
    per_rank_batch = max(1, cfg.batch_size // world)
    steps_per_epoch = n // cfg.batch_size if n >= cfg.batch_size else 1
    total_steps = 0
    summary = {}
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        # Same permutation on every rank (seeded by epoch), disjoint shards.
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=gen)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 31 + rank)
        mix_rng = np.random.default_rng([cfg.seed, epoch, rank])
        t0 = time.time()
        loss_sum, correct, seen, cost_sum = 0.0, 0, 0, 0.0
        bar = range(steps_per_epoch)
        if progress and is_main:
            from tqdm import tqdm

            bar = tqdm(bar, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for step in bar:
            idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            idx = idx[rank * per_rank_batch:(rank + 1) * per_rank_batch]
            xb = aug(xs[idx], aug_gen).to(device, non_blocking=True)
            yb = ys[idx].to(device, non_blocking=True)
            xb = norm(xb).contiguous(memory_format=memory_format)
            lr = cosine_lr(cfg.lr, epoch + step / steps_per_epoch, cfg.epochs, cfg.warmup_epochs)
            if total_steps < ramp_steps:
                lr *= (total_steps + 1) / ramp_steps
            for group in optimizer.param_groups:
                group["lr"] = lr
            if mixer.active:
                xb, yb, yb_other, share = mixer(xb, yb, mix_rng)
            logits = net(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
            if mixer.active:
                loss = share * loss + (1.0 - share) * F.cross_entropy(logits, yb_other,
                                                                      label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(xb)
                loss = distillation_loss(loss, logits, teacher_logits, cfg.distill_weight, cfg.distill_temperature)
            if penalized:  # the mean spike cost per neuron and image, weighted
                cost, neurons = collect_spike_cost(model)
                mean_cost = cost / (len(yb) * neurons)
                loss = loss + cfg.spike_penalty * mean_cost
                cost_sum += float(mean_cost.detach()) * len(yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for q in quantizers:
                q.keep_lambda_positive()
            if average is not None:
                average.update(model)
            with torch.no_grad():
                loss_sum += loss.item() * len(yb)
                # under MixUp/CutMix, against the label with the larger share
                hard = yb if not mixer.active or share >= 0.5 else yb_other
                correct += (logits.argmax(1) == hard).sum().item()
                seen += len(yb)
            if progress and is_main:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.4f}")
            total_steps += 1
            if cfg.max_steps and total_steps >= cfg.max_steps:
                break
        epoch_time = time.time() - t0
        wall += epoch_time
        entry = {"epoch": epoch + 1, "loss": loss_sum / max(1, seen), "train_acc": correct / max(1, seen),
                 "lr": lr, "time_s": round(epoch_time, 1)}
        if penalized:
            entry[f"train_{cfg.penalty_rule}_per_neuron"] = round(cost_sum / max(1, seen), 5)
        step_limit = bool(cfg.max_steps and total_steps >= cfg.max_steps)
        last = epoch + 1 == cfg.epochs or step_limit
        delivered = average.model if average is not None else model
        if test_x is not None and is_main and ((epoch + 1) % max(1, cfg.eval_every) == 0 or last):
            test_xt, test_yt = torch.from_numpy(test_x), torch.from_numpy(test_y.astype(np.int64))
            entry["test_acc"] = evaluate(delivered, test_xt, test_yt, norm, device, channels_last=channels_last)
            if average is not None:  # the last weights beside their average, to show what averaging gave
                entry["test_acc_live"] = evaluate(model, test_xt, test_yt, norm, device, channels_last=channels_last)
        entry["lambdas"] = [round(float(m.lam.detach()), 4) for _, m in quantized_activations(delivered)]
        history.append(entry)
        if is_main:
            log(json.dumps({k: v for k, v in entry.items() if k != "lambdas"}))
            state = {"model": delivered.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                     "history": history, "config": asdict(cfg), "wall_s": wall}
            if average is not None:
                state.update({LIVE_WEIGHTS: model.state_dict(), AVERAGED_STEPS: average.steps})
            write_atomic(ckpt_path, lambda tmp: torch.save(state, tmp))
            if cfg.compact_checkpoint:
                compact = {key: state[key] for key in ("epoch", "history", "config", "wall_s", AVERAGED_STEPS)
                           if key in state}
                for key in ("model", LIVE_WEIGHTS):
                    if key in state:
                        compact[key] = {k: v.half() if v.is_floating_point() else v for k, v in state[key].items()}
                write_atomic(compact_path, lambda tmp: torch.save(compact, tmp))
        if step_limit:
            break
    summary = {"config": asdict(cfg), "history": history, "wall_s": round(wall, 1),
               "epochs_done": history[-1]["epoch"] if history else start_epoch,
               "final_test_acc": history[-1].get("test_acc") if history else None}
    if is_main:
        save_text_atomic(json.dumps(summary, indent=1), os.path.join(out_dir, "summary.json"))
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    summary["model"] = average.model if average is not None else model
    return summary
