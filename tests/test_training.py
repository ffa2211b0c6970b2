"""Tests for pmsm_compiler.training.trainer and the pmsm-train CLI: a few steps reduce the loss,
checkpoint/resume continues exactly where it stopped and refuses a changed config, and the CLI
writes its outputs and fails cleanly (exit code 2, one line) on bad input.

Every run uses one torch thread: on a 2-core machine that is already busy, two OpenMP threads
made 20 steps of resnet_tiny about 10x slower.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shlex

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from pmsm_compiler.cli.train import main as train_cli
from pmsm_compiler.training.activations import quantized_activations
from pmsm_compiler.data import NORMALIZATIONS, load_bundled_sample
from pmsm_compiler.training.zoo import build_model
from pmsm_compiler.training.trainer import (LOG_COMMAND, Normalizer, TrainConfig, channels_last_hazard,
                                            command_log_line, read_train_log, train)

MEAN, STD = NORMALIZATIONS["cifar10"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sample():
    ds = load_bundled_sample()
    return ds.x, ds.y


def quiet(_line):
    pass


def fixed_batch_loss(model, x_uint8, y) -> float:
    """Cross-entropy on a fixed batch, BatchNorm on batch statistics (so the running statistics,
    which the first steps only start to fill in, do not blur the comparison); no update."""
    m = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)
    m.train()
    with torch.no_grad():
        logits = m(Normalizer(MEAN, STD)(torch.from_numpy(x_uint8)))
        return F.cross_entropy(logits, torch.from_numpy(y.astype(np.int64))).item()


def test_twenty_steps_reduce_the_loss(sample, tmp_path):
    x, y = sample
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=1, max_steps=20, seed=0, threads=1)
    torch.manual_seed(cfg.seed)  # train() seeds the same way before building the model
    initial = build_model(cfg.model, num_classes=10, act=cfg.act_spec())
    fx, fy = x[:256], y[:256]
    before = fixed_batch_loss(initial, fx, fy)
    summary = train(cfg, x, y, None, None, str(tmp_path), MEAN, STD, progress=False, log=quiet)
    after = fixed_batch_loss(summary["model"], fx, fy)
    print(f"\nfixed-batch loss before {before:.4f}, after 20 steps {after:.4f}")
    # Measured over seeds 0-3 and lr 0.05/0.1: 2.32-2.38 -> 2.06-2.13 (a drop of 0.21-0.31).
    assert after < before - 0.1
    h = summary["history"]
    assert len(h) == 1 and h[0]["epoch"] == 1 and np.isfinite(h[0]["loss"])
    assert len(h[0]["lambdas"]) == 7
    # λ is learned: at least one moved from its initial 8
    assert any(lam != 8.0 for lam in h[0]["lambdas"])
    assert os.path.exists(tmp_path / "checkpoint.pt") and os.path.exists(tmp_path / "summary.json")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_channels_last_hazard_names_the_small_strided_pointwise_convolutions():
    # torch 2.13's oneDNN crashes in the channels_last weight gradient of a 1×1 stride-2 conv with
    # 2..7 input channels (bench/onednn_channels_last.py: segfault or abort at one thread, AMD EPYC).
    tiny = build_model("resnet_tiny", act="pqa")
    assert "1×1 stride-2 convolution with 4 input channels" in channels_last_hazard(tiny)
    assert channels_last_hazard(build_model("resnet20", act="pqa")) == ""
    assert channels_last_hazard(build_model("vgg_tiny", act="pqa")) == ""
    for cin, stride, kernel, risky in [(4, 2, 1, True), (2, 1, 1, False), (8, 2, 1, False), (1, 2, 1, False),
                                       (4, 2, 3, False), (7, 3, 1, True)]:
        conv = torch.nn.Sequential(torch.nn.Conv2d(cin, 8, kernel, stride))
        assert bool(channels_last_hazard(conv)) is risky, (cin, stride, kernel)


def test_training_a_model_with_the_hazard_runs_in_nchw_and_says_so(sample, tmp_path):
    lines = []
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=1, max_steps=1, threads=1)
    summary = train(cfg, sample[0][:32], sample[1][:32], None, None, str(tmp_path), MEAN, STD, progress=False,
                    log=lines.append)
    assert any(line.startswith("training in NCHW, not channels_last: ") for line in lines)
    weights = [m.weight for m in summary["model"].modules()
               if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert weights and all(w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)
                           for w in weights)


def test_eval_every_evaluates_every_nth_epoch_and_the_last(sample, tmp_path):
    x, y = sample[0][:32], sample[1][:32]
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=5, eval_every=2, threads=1)
    summary = train(cfg, x, y, x[:16], y[:16], str(tmp_path), MEAN, STD, progress=False, log=quiet)
    assert ["test_acc" in e for e in summary["history"]] == [False, True, False, True, True]
    assert summary["final_test_acc"] == summary["history"][-1]["test_acc"]
    # stopped early by max_steps: the epoch it stops in is evaluated
    early = train(dataclasses.replace(cfg, max_steps=1), x, y, x[:16], y[:16], str(tmp_path / "early"), MEAN, STD,
                  progress=False, log=quiet)
    assert early["epochs_done"] == 1 and early["final_test_acc"] is not None


def test_checkpoint_resume_continues_exactly_and_refuses_a_changed_config(sample, tmp_path):
    x, y = sample[0][:64], sample[1][:64]   # batch 32: 2 steps per epoch
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=3, seed=5, threads=1)

    full = train(cfg, x, y, None, None, str(tmp_path / "full"), MEAN, STD, progress=False, log=quiet)
    assert [e["epoch"] for e in full["history"]] == [1, 2, 3]

    out = str(tmp_path / "resumed")
    first = train(dataclasses.replace(cfg, max_steps=2), x, y, None, None, out, MEAN, STD,
                  progress=False, log=quiet)
    assert first["epochs_done"] == 1
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["config"]["epochs"] == 3

    lines = []
    second = train(cfg, x, y, None, None, out, MEAN, STD, progress=False, log=lines.append)
    assert any(line.startswith("resumed from") and "at epoch 1" in line for line in lines)
    assert [e["epoch"] for e in second["history"]] == [1, 2, 3]
    assert second["history"][0] == first["history"][0]
    # the interrupted run ends bit for bit where the uninterrupted one did
    resumed, uninterrupted = _state(second["model"]), _state(full["model"])
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), k
    for a, b in zip(second["history"], full["history"]):
        assert a["loss"] == b["loss"] and a["lambdas"] == b["lambdas"]

    # a finished run resumes to "nothing left to do"
    again = train(cfg, x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    assert again["epochs_done"] == 3 and len(again["history"]) == 3
    for k, v in _state(again["model"]).items():
        assert torch.equal(v, resumed[k]), k

    # a changed config is refused, naming the field; the checkpoint is left alone
    for change, field in [(dict(alpha=-0.5), "alpha"), (dict(model="vgg_tiny"), "model"),
                          (dict(batch_size=16), "batch_size"), (dict(epochs=4), "epochs"),
                          (dict(act="qcfs"), "act"), (dict(lr=0.05), "lr"), (dict(lam=2.0), "lam"),
                          (dict(warmup_epochs=1), "warmup_epochs"), (dict(weight_decay=1e-4), "weight_decay")]:
        with pytest.raises(ValueError, match=rf"{field}=.*--no-resume"):
            train(dataclasses.replace(cfg, **change), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["epoch"] == 3
    # ... unless resume is off
    fresh = train(dataclasses.replace(cfg, alpha=-0.5, epochs=1, max_steps=1), x, y, None, None, out, MEAN, STD,
                  resume=False, progress=False, log=quiet)
    assert fresh["epochs_done"] == 1


def test_init_from_a_relu_checkpoint_loads_every_weight_and_keeps_lambda0(sample, tmp_path):
    from pmsm_compiler.training.trainer import load_init_weights

    x, y = sample[0][:64], sample[1][:64]
    relu_cfg = TrainConfig(model="resnet_tiny", act="relu", batch_size=32, epochs=1, seed=3, threads=1)
    relu = train(relu_cfg, x, y, None, None, str(tmp_path / "relu"), MEAN, STD, progress=False, log=quiet)
    ckpt = str(tmp_path / "relu" / "checkpoint.pt")
    relu_state = _state(relu["model"])

    pqa = build_model("resnet_tiny", num_classes=10, act=TrainConfig(lam=6.0).act_spec())
    loaded = load_init_weights(pqa, ckpt)
    assert loaded["loaded"] == len(relu_state)
    assert len(loaded["kept_initial"]) == 7 and all(k.endswith(".lam") for k in loaded["kept_initial"])
    for k, v in _state(pqa).items():
        if k.endswith(".lam"):
            assert float(v) == 6.0, k          # λ0 as configured
        else:
            assert torch.equal(v, relu_state[k]), k

    # train() starts from those weights (and logs it); the schedule is the fine-tuning's own
    lines = []
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=2, max_steps=1, seed=3, threads=1, init_from=ckpt)
    out = str(tmp_path / "ft")
    tuned = train(cfg, x, y, None, None, out, MEAN, STD, progress=False, log=lines.append)
    assert any(line.startswith(f"initialized from {ckpt}") for line in lines)
    assert tuned["config"]["init_from"] == ckpt
    # one SGD step from the ReLU weights stays close to them; a fresh init would not
    w = "layers.0.conv1.weight"
    assert (tuned["model"].state_dict()[w] - relu_state[w]).abs().max() < 0.1 * relu_state[w].abs().max()
    # resuming with another starting point is refused
    with pytest.raises(ValueError, match=r"init_from=.*--no-resume"):
        train(dataclasses.replace(cfg, init_from=""), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)


def test_init_from_a_clip_pretraining_hands_over_its_lambdas(sample, tmp_path):
    """A float clip(x, αλ, βλ) pre-training (``--act clip``) fine-tunes into PQA with its λ, so the
    quantized network starts from the float one's function, rounded to λ/L."""
    from pmsm_compiler.training.activations import ClipFloat
    from pmsm_compiler.training.trainer import load_init_weights

    x, y = sample[0][:64], sample[1][:64]
    cfg = TrainConfig(model="resnet_tiny", act="clip", lam=3.0, batch_size=32, epochs=1, seed=3, threads=1)
    clip = train(cfg, x, y, None, None, str(tmp_path / "clip"), MEAN, STD, progress=False, log=quiet)["model"]
    assert sum(isinstance(m, ClipFloat) for m in clip.modules()) == 7
    pqa = build_model("resnet_tiny", num_classes=10, act=TrainConfig(lam=6.0).act_spec())
    loaded = load_init_weights(pqa, str(tmp_path / "clip" / "checkpoint.pt"))
    assert loaded["kept_initial"] == []
    assert all(float(m.lam.detach()) == 3.0 for _, m in quantized_activations(pqa))
    clip, pqa = clip.float().eval(), pqa.eval()
    with torch.no_grad():
        xb = Normalizer(MEAN, STD)(torch.from_numpy(x))
        a, b = clip(xb), pqa(xb)
    assert not torch.equal(a, b)                      # rounded ...
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.75   # ... but the same network


def test_init_from_refuses_what_does_not_fit(sample, tmp_path):
    from pmsm_compiler.training.trainer import load_init_weights

    other = build_model("vgg_tiny", num_classes=10, act="relu")
    path = tmp_path / "vgg.pt"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_init_weights(build_model("resnet_tiny", num_classes=10, act="pqa"), str(path))
    wider = build_model("resnet_tiny", num_classes=7, act="relu")  # same names, another head
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"2 shape mismatch\(es\) \(first: fc.bias: \(7,\) vs \(10,\)\)"):
        load_init_weights(build_model("resnet_tiny", num_classes=10, act="pqa"), str(tmp_path / "wider.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_init_weights(build_model("resnet_tiny", num_classes=10, act="pqa"), str(tmp_path / "junk.pt"))


def test_distillation_loss_is_hintons_mix_of_hard_and_soft_targets():
    from pmsm_compiler.training.trainer import distillation_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    ce = F.cross_entropy(student, torch.arange(8) % 10)
    assert torch.equal(distillation_loss(ce, student, teacher, 0.0, 4.0), ce)
    # a student that already matches its teacher pays only its share of the hard loss
    assert torch.allclose(distillation_loss(ce, teacher, teacher, 0.5, 4.0), 0.5 * ce, atol=1e-7)
    tau = 3.0
    p = F.softmax(teacher / tau, dim=1)
    kl = (p * (p.log() - F.log_softmax(student / tau, dim=1))).sum(1).mean()
    assert torch.allclose(distillation_loss(ce, student, teacher, 1.0, tau), tau * tau * kl, rtol=1e-5)


def test_distill_from_a_teacher_checkpoint_pulls_the_student_towards_it(sample, tmp_path):
    """The teacher is the checkpoint's model with its own activation (L = 4 here, the student
    L = 8); a student trained with w = 1 learns from the teacher's soft targets only: given labels
    that contradict the teacher's, its logits still move towards the teacher's."""
    from pmsm_compiler.training.trainer import load_teacher

    x, y = sample[0][:64], sample[1][:64]
    teach_cfg = TrainConfig(model="resnet_tiny", levels=4, lam=2.0, batch_size=32, epochs=15, seed=5, threads=1)
    train(teach_cfg, x, y, None, None, str(tmp_path / "teacher"), MEAN, STD, progress=False, log=quiet)
    ckpt = str(tmp_path / "teacher" / "checkpoint.pt")
    teacher = load_teacher(TrainConfig(model="resnet_tiny"), ckpt, torch.device("cpu"), torch.contiguous_format)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert {m.levels for _, m in quantized_activations(teacher)} == {4}

    xb = Normalizer(MEAN, STD)(torch.from_numpy(x))

    with torch.no_grad():
        teacher_logits = teacher(xb)

    def distance(model):
        """KL from the teacher's soft targets, and agreement with its predictions."""
        with torch.no_grad():
            logits = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()(xb)
        kl = F.kl_div(F.log_softmax(logits / 4, dim=1), F.log_softmax(teacher_logits / 4, dim=1),
                      reduction="batchmean", log_target=True).item()
        return kl, (logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()

    lines = []
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=1, max_steps=0, seed=3, threads=1, lr=0.05,
                      distill_from=ckpt, distill_weight=1.0)
    torch.manual_seed(cfg.seed)
    start = build_model("resnet_tiny", num_classes=10, act=cfg.act_spec())  # as train() builds the student
    wrong = (y + 1) % 10  # labels the teacher never saw; w = 1 must ignore them
    student = train(dataclasses.replace(cfg, epochs=6), x, wrong, None, None, str(tmp_path / "student"), MEAN,
                    STD, progress=False, log=lines.append)
    assert any(line.startswith(f"distilling from {ckpt} (w=1.0") for line in lines)
    (kl_start, agree_start), (kl, agree) = distance(start), distance(student["model"])
    assert kl < 0.6 * kl_start
    # the wrong labels alone would teach it never to agree (measured: 0 of 64); the teacher: 20 of 64
    assert agree_start <= 0.05 and agree >= 0.2
    with pytest.raises(ValueError, match=r"distill_weight=1.0.*--no-resume"):
        train(dataclasses.replace(cfg, epochs=6, distill_weight=0.5), x, wrong, None, None, str(tmp_path / "student"),
              MEAN, STD, progress=False, log=quiet)
    other = build_model("vgg_tiny", num_classes=10, act="relu")
    torch.save({"model": other.state_dict()}, tmp_path / "vgg.pt")
    with pytest.raises(ValueError, match=r"--distill-from: .*does not fit this model"):
        load_teacher(TrainConfig(model="resnet_tiny"), str(tmp_path / "vgg.pt"), torch.device("cpu"),
                     torch.contiguous_format)


def test_an_optimizer_step_that_carries_lambda_through_zero_is_projected_back(sample, tmp_path, monkeypatch):
    """A spike-penalized fine-tune drove a near-dead branch's λ (0.03) to −1.19 in one epoch (its
    gradient grows as 1/λ); no AIF neuron has θ = λ/L ≤ 0, so the compiler refused the export.
    Training keeps every λ ≥ LAMBDA_MIN after each step."""
    from pmsm_compiler.defaults import LAMBDA_MIN

    step = torch.optim.SGD.step

    def overshooting_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.dim() == 0:  # the λ (every other parameter has a dimension)
                        p.sub_(10.0)
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", overshooting_step)
    x, y = sample[0][:64], sample[1][:64]
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=1, max_steps=2, seed=0, threads=1,
                      spike_penalty=0.5)
    out = train(cfg, x, y, None, None, str(tmp_path / "run"), MEAN, STD, progress=False, log=quiet)
    lams = [float(m.lam) for _, m in quantized_activations(out["model"])]
    assert lams and all(lam == np.float32(LAMBDA_MIN) for lam in lams)


def test_mixup_blends_two_images_and_their_labels_by_the_same_share():
    from pmsm_compiler.training.trainer import BatchMixer

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.arange(16)
    xm, ya, yb, m = BatchMixer(mixup=0.8, cutmix=0.0)(x, y, np.random.default_rng(1))
    assert torch.equal(ya, y) and sorted(yb.tolist()) == list(range(16)) and 0 < m < 1
    other = x[yb]  # labels are the indices here, so they name the partner image
    assert torch.allclose(xm, m * x + (1 - m) * other, atol=1e-6)


def test_cutmix_pastes_one_box_whose_area_is_the_label_share():
    from pmsm_compiler.training.trainer import BatchMixer

    x, y = torch.zeros(8, 3, 16, 16), torch.arange(8)
    x += y[:, None, None, None].float()  # image i is the constant i
    for seed in range(20):
        xm, ya, yb, m = BatchMixer(mixup=0.0, cutmix=1.0)(x, y, np.random.default_rng(seed))
        pasted = xm[:, 0] != x[:, 0]
        for i in range(8):
            if ya[i] != yb[i]:
                assert pasted[i].float().mean().item() == pytest.approx(1 - m, abs=1e-9)
                assert torch.all(xm[i, :, pasted[i]] == float(yb[i]))
        rows, cols = pasted.any(0).any(1).nonzero(), pasted.any(0).any(0).nonzero()
        if len(rows):  # one axis-aligned box, the same for every image
            box = pasted.any(0)
            assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_both_mixers_on_choose_one_per_batch():
    from pmsm_compiler.training.trainer import BatchMixer

    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    kinds = set()
    for seed in range(20):
        xm, _, yb, m = BatchMixer(mixup=0.8, cutmix=1.0)(x, y, np.random.default_rng(seed))
        kinds.add("mixup" if torch.allclose(xm, m * x + (1 - m) * x[yb], atol=1e-6) else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_adamw_decays_weight_matrices_only():
    from pmsm_compiler.training.trainer import build_optimizer

    model = build_model("vit_tiny", num_classes=10, act="pqa")
    opt = build_optimizer(model, TrainConfig(model="vit_tiny", optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in opt.param_groups[0]["params"]}
    kept = {names[id(p)] for p in opt.param_groups[1]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05 and opt.param_groups[1]["weight_decay"] == 0.0
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= kept
    assert all(n in kept for n in names.values() if n.endswith(".lam"))
    sgd = build_optimizer(model, TrainConfig())
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1


def test_vit_recipe_trains_and_resumes_exactly(sample, tmp_path):
    """AdamW, label smoothing, MixUp and CutMix on a ViT: an interrupted
    run ends bit for bit where the uninterrupted one did (the mixing draws are seeded per epoch)."""
    x, y = sample[0][:64], sample[1][:64]
    cfg = TrainConfig(model="vit_tiny", batch_size=32, epochs=2, seed=5, threads=1, optimizer="adamw", lr=2e-3,
                      weight_decay=0.05, label_smoothing=0.1, mixup=0.8, cutmix=1.0)
    full = train(cfg, x, y, None, None, str(tmp_path / "full"), MEAN, STD, progress=False, log=quiet)
    out = str(tmp_path / "resumed")
    train(dataclasses.replace(cfg, max_steps=2), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    second = train(cfg, x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    for k, v in _state(second["model"]).items():
        assert torch.equal(v, _state(full["model"])[k]), k
    for change, field in [(dict(mixup=0.2), "mixup"), (dict(optimizer="sgd"), "optimizer"),
                          (dict(label_smoothing=0.0), "label_smoothing"), (dict(cutmix=0.0), "cutmix")]:
        with pytest.raises(ValueError, match=rf"{field}=.*--no-resume"):
            train(dataclasses.replace(cfg, **change), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)


def test_compact_checkpoint_is_small_resumes_from_float16_weights_and_ramps_the_fresh_optimizer(sample, tmp_path):
    """--compact-checkpoint: float16 weights and no optimizer state; a folder that has only it resumes
    at its epoch from exactly those weights, with a fresh AdamW whose lr ramps up, and says so."""
    from pmsm_compiler.defaults import COMPACT_CHECKPOINT, COMPACT_RESUME_RAMP_STEPS

    x, y = sample[0][:64], sample[1][:64]   # batch 32: 2 steps per epoch
    cfg = TrainConfig(model="vit_tiny", batch_size=32, epochs=3, seed=5, threads=1, optimizer="adamw", lr=2e-3,
                      weight_decay=0.05, compact_checkpoint=True)
    out = str(tmp_path / "run")
    first = train(dataclasses.replace(cfg, max_steps=2), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    full_path, compact_path = os.path.join(out, "checkpoint.pt"), os.path.join(out, COMPACT_CHECKPOINT)
    compact = torch.load(compact_path, weights_only=False)
    assert "optimizer" not in compact and compact["epoch"] == 1 and compact["config"]["compact_checkpoint"]
    weights = _state(first["model"])
    for k, v in compact["model"].items():
        assert v.dtype == (torch.float16 if weights[k].is_floating_point() else weights[k].dtype), k
        assert torch.equal(v, weights[k].to(v.dtype)), k
    # AdamW keeps two moments per weight: the compact file is about a sixth of the full one
    assert os.path.getsize(compact_path) < os.path.getsize(full_path) / 4

    os.remove(full_path)
    # what the resumed run starts from: the float16 weights, widened back
    seen = {}

    def spy(model, *args, **kwargs):
        seen.setdefault("start", {k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_forward(model, *args, **kwargs)

    model_cls = type(first["model"])
    real_forward = model_cls.forward
    lines = []
    try:
        model_cls.forward = spy
        second = train(dataclasses.replace(cfg, max_steps=3), x, y, None, None, out, MEAN, STD, progress=False,
                       log=lines.append)
    finally:
        model_cls.forward = real_forward
    assert any(line.startswith("resumed from") and line.endswith(f"{COMPACT_CHECKPOINT} at epoch 1") for line in lines)
    assert any("no optimizer state" in line and f"ramped over {COMPACT_RESUME_RAMP_STEPS} steps" in line
               for line in lines)
    for k, v in seen["start"].items():
        assert v.dtype == weights[k].dtype and torch.equal(v, compact["model"][k].to(v.dtype)), k
    # epoch 2's two steps at lr × 1/100 and 2/100 of the schedule: the last-step lr in the history shows it
    from pmsm_compiler.training.trainer import cosine_lr

    assert second["history"][1]["epoch"] == 2
    assert second["history"][1]["lr"] == pytest.approx(cosine_lr(cfg.lr, 1 + 1 / 2, 3, 0) * 2 / COMPACT_RESUME_RAMP_STEPS)
    assert os.path.exists(full_path)  # the resumed run writes both again


def test_weight_average_follows_its_formula_and_copies_integer_buffers():
    from pmsm_compiler.training.weight_average import WeightAverage, average_decay

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = _state(model)
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.double() for k, v in start.items()}
    for step in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()
        model(torch.randn(4, 3))  # moves the running statistics and the integer step counter
        average.update(model)
        d = average_decay(0.9, step)
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v.double() if v.is_floating_point() else v.clone()
    # the warm-up: the first steps replace the start quickly, then the decay holds
    assert average_decay(0.9, 1) == pytest.approx(2 / 11) and average_decay(0.9, 1000) == 0.9
    for k, v in average.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v.double(), expected[k], rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(v, expected[k]), k
    assert not torch.allclose(average.model[0].weight, model[0].weight)
    assert not any(p.requires_grad for p in average.model.parameters())
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(model, decay=1.0)


def test_a_weight_averaged_run_delivers_the_average_and_resumes_exactly(sample, tmp_path):
    """--ema: the checkpoint's model (what --init-from, teachers and exports load), the evaluation and
    the returned network are the average; the trained weights resume the run, bit for bit."""
    from pmsm_compiler.training.trainer import LIVE_WEIGHTS, load_init_weights

    x, y = sample[0][:64], sample[1][:64]   # batch 32: 2 steps per epoch
    cfg = TrainConfig(model="resnet_tiny", batch_size=32, epochs=3, seed=5, threads=1, lr=0.05, ema=0.9,
                      spike_penalty=0.1)
    full = train(cfg, x, y, x[:32], y[:32], str(tmp_path / "full"), MEAN, STD, progress=False, log=quiet)
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    assert ckpt["ema_steps"] == 6
    delivered = _state(full["model"])
    for k, v in ckpt["model"].items():
        assert torch.equal(v, delivered[k]), k
    assert any(not torch.equal(ckpt["model"][k], ckpt[LIVE_WEIGHTS][k]) for k in ckpt["model"]
               if ckpt["model"][k].is_floating_point())
    last = full["history"][-1]
    assert "test_acc" in last and "test_acc_live" in last
    # the average only watches: the trained weights are bit for bit those of the same run without it
    without = train(dataclasses.replace(cfg, ema=0.0), x, y, x[:32], y[:32], str(tmp_path / "without"), MEAN, STD,
                    progress=False, log=quiet)
    for k, v in _state(without["model"]).items():
        assert torch.equal(v, ckpt[LIVE_WEIGHTS][k]), k
    assert without["history"][-1]["test_acc"] == last["test_acc_live"]
    plain = build_model("resnet_tiny", act=cfg.act_spec())
    load_init_weights(plain, str(tmp_path / "full" / "checkpoint.pt"))
    for k, v in _state(plain).items():
        assert torch.equal(v, delivered[k]), k

    out = str(tmp_path / "resumed")
    train(dataclasses.replace(cfg, max_steps=2), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    second = train(cfg, x, y, x[:32], y[:32], out, MEAN, STD, progress=False, log=quiet)
    resumed_ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    for key in ("model", LIVE_WEIGHTS):
        for k, v in resumed_ckpt[key].items():
            assert torch.equal(v, ckpt[key][k]), (key, k)
    assert second["history"][-1]["test_acc"] == last["test_acc"]
    for change, field in [(dict(ema=0.0), "ema"), (dict(ema=0.99), "ema")]:
        with pytest.raises(ValueError, match=rf"{field}=.*--no-resume"):
            train(dataclasses.replace(cfg, **change), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)

    # a compact checkpoint keeps both, in float16; a run resumed from it continues the average from there
    from pmsm_compiler.defaults import COMPACT_CHECKPOINT

    compact_cfg = dataclasses.replace(cfg, compact_checkpoint=True)
    out = str(tmp_path / "compact")
    train(dataclasses.replace(compact_cfg, max_steps=2), x, y, None, None, out, MEAN, STD, progress=False, log=quiet)
    compact = torch.load(os.path.join(out, COMPACT_CHECKPOINT), weights_only=False)
    assert compact["ema_steps"] == 2 and "optimizer" not in compact
    assert {v.dtype for key in ("model", LIVE_WEIGHTS) for v in compact[key].values() if v.is_floating_point()} \
        == {torch.float16}
    os.remove(os.path.join(out, "checkpoint.pt"))
    seen = []
    from pmsm_compiler.training import weight_average

    real_init = weight_average.WeightAverage.__init__

    def spy(self, model, decay, state=None, steps=0):
        seen.append((state, steps))
        real_init(self, model, decay, state, steps)

    weight_average.WeightAverage.__init__ = spy
    try:
        resumed = train(dataclasses.replace(compact_cfg, max_steps=3), x, y, None, None, out, MEAN, STD,
                        progress=False, log=quiet)
    finally:
        weight_average.WeightAverage.__init__ = real_init
    assert seen[0][1] == 2 and all(torch.equal(seen[0][0][k], compact["model"][k]) for k in compact["model"])
    # max_steps counts this session's steps: epoch 2's two and one of epoch 3's
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["ema_steps"] == 2 + 3
    assert resumed["epochs_done"] == 3


def test_vit_cifar_is_the_documented_size():
    model = build_model("vit_cifar", num_classes=10, act="pqa")
    assert (model.dim, model.depth, model.num_heads, model.patch_size) == (192, 6, 3, 4)
    assert 1.7e6 < sum(p.numel() for p in model.parameters()) < 1.9e6
    assert len(list(quantized_activations(model))) == 10 * 6 + 2


# ------------------------------------------------------------------------------------------------
# pmsm-train CLI
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def npz_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "train.npz", x=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 48).astype(np.int64))
    np.savez(folder / "test.npz", x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 10, 16).astype(np.int64))
    return folder


def invoke(args):
    return CliRunner().invoke(train_cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_trains_and_writes_its_outputs(npz_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke(["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--epochs", 1,
                     "--max-steps", 2, "--batch-size", 16, "--threads", 1, "--no-progress"])
    assert result.exit_code == 0, result.output
    for name in ("checkpoint.pt", "summary.json", "train.log", "model.onnx"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["config"]["model"] == "resnet_tiny"
    assert summary["config"]["max_steps"] == 2 and summary["final_test_acc"] is not None
    log = (out / "train.log").read_text()
    assert log.startswith("command:") and "exported" in log
    model = onnx.load(str(out / "model.onnx"))
    pqa = [n for n in model.graph.node if n.domain == "pmsm" and n.op_type == "PQA"]
    assert len(pqa) == 7
    assert [(f.domain, f.name) for f in model.functions] == [("pmsm", "PQA")]
    meta = {p.key: p.value for p in model.metadata_props}
    info = json.loads(meta["pmsm.export"])
    assert info["normalization"]["mean"] == list(MEAN) and len(info["activations"]) == 7
    ckpt = torch.load(str(out / "checkpoint.pt"), weights_only=False)
    assert ckpt["epoch"] == 1



def test_train_log_records_each_session_and_where_it_resumed(npz_folder, tmp_path):
    out = tmp_path / "run"
    args = ["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--max-steps", 1, "--batch-size", 16,
            "--threads", 1, "--no-progress", "--no-export"]
    assert invoke(args + ["--epochs", 2]).exit_code == 0
    sessions = read_train_log(str(out))
    assert len(sessions) == 1 and sessions[0]["from_epoch"] == 0
    # --max-steps stopped the first session after epoch 1 of 2; the same command again resumes there
    assert invoke(args + ["--epochs", 2]).exit_code == 0
    assert [s["from_epoch"] for s in read_train_log(str(out))] == [0, 1]
    assert read_train_log(str(tmp_path / "nowhere")) == []


def test_the_logged_command_splits_back_into_its_arguments():
    argv = ["/venv/bin/pmsm-train", "--data", "/data/my cifar", "--out", "it's/here", "--seed", "42"]
    line = command_log_line(argv)
    assert line.startswith(LOG_COMMAND)
    assert shlex.split(line[len(LOG_COMMAND):]) == ["pmsm-train"] + argv[1:]

def _one_error_line(result):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_bad_data_path(tmp_path):
    out = tmp_path / "run"
    result = invoke(["--data", tmp_path / "missing", "--out", out, "--model", "resnet_tiny", "--no-progress"])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "missing" in line and "not found" in line
    assert not out.exists()


@pytest.mark.parametrize("alpha,match", [("0.1", "PQA needs α ≤ 0 < β"), ("-0.3", "integer")])
def test_cli_bad_alpha(npz_folder, tmp_path, alpha, match):
    out = tmp_path / "run"
    result = invoke(["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--alpha", alpha,
                     "--max-steps", 1, "--no-progress"])
    assert result.exit_code == 2
    assert match in _one_error_line(result)
    assert not (out / "checkpoint.pt").exists()


def test_cli_bad_eval_every(npz_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke(["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--eval-every", 0,
                     "--max-steps", 1, "--no-progress"])
    assert result.exit_code == 2
    assert "--eval-every must be >= 1" in _one_error_line(result)
    assert not out.exists()


def test_cli_init_from_missing_file(npz_folder, tmp_path):
    out = tmp_path / "run"
    result = invoke(["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--init-from",
                     tmp_path / "nope.pt", "--no-progress"])
    assert result.exit_code == 2
    assert "--init-from" in _one_error_line(result) and "nope.pt" in result.output
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("args, match", [
    (["--distill-from", "nope.pt"], "--distill-from: no such file"),
    (["--distill-weight", "1.5"], r"--distill-weight must be in \[0, 1\]"),
    (["--distill-temperature", "0"], "--distill-temperature must be a finite number > 0"),
    (["--label-smoothing", "1"], r"--label-smoothing must be in \[0, 1\)"),
    (["--mixup", "-1"], "--mixup must be a finite number >= 0"),
    (["--cutmix", "inf"], "--cutmix must be a finite number >= 0"),
    (["--ema", "1"], r"--ema must be 0 \(off\) or a decay in \(0, 1\)"),
    (["--ema", "-0.5"], r"--ema must be 0 \(off\) or a decay in \(0, 1\)"),
])
def test_cli_bad_distillation_options(npz_folder, tmp_path, args, match):
    out = tmp_path / "run"
    result = invoke(["--data", npz_folder, "--out", out, "--model", "resnet_tiny", "--no-progress", *args])
    assert result.exit_code == 2
    assert re.search(match, _one_error_line(result))
    assert not (out / "checkpoint.pt").exists()


def test_cli_bad_data_folder_contents(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    np.savez(folder / "train.npz", images=np.zeros((4, 32, 32, 3), np.uint8))   # wrong keys
    result = invoke(["--data", folder, "--out", tmp_path / "run", "--model", "resnet_tiny", "--no-progress"])
    assert result.exit_code == 2
    assert "train.npz" in _one_error_line(result)


def test_torchrun_ddp_two_processes(tmp_path, bundled_data_folder):
    """The same command runs DistributedDataParallel under torchrun (gloo on CPU)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("torchrun") is None and not shutil.which(os.path.join(os.path.dirname(sys.executable), "torchrun")):
        pytest.skip("torchrun not installed")
    data = bundled_data_folder(256, 64)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
         "-m", "pmsm_compiler.cli.train", "--data", str(data), "--model", "resnet_tiny", "--epochs", "1",
         "--batch-size", "64", "--threads", "1", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "checkpoint.pt").exists() and (out / "model.onnx").exists()
    log = (out / "train.log").read_text()
    assert log.count('"epoch": 1') == 1  # only rank 0 logs
