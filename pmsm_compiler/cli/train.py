"""pmsm-train: train a zoo model with PQA / QCFS / ReLU (paper Table 4 defaults) and export ONNX."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import click
import numpy as np

from pmsm_compiler.cli.options import NORMAL, VERBOSE, command, json_option, progress_option, show_progress, verbosity
from pmsm_compiler.defaults import (COMPACT_CHECKPOINT, COMPACT_RESUME_RAMP_STEPS, DISTILL_TEMPERATURE, DISTILL_WEIGHT,
                                    PQA_ALPHA, PQA_BETA, PQA_LAMBDA, PQA_LEVELS)
from pmsm_compiler.errors import InputError, cli_errors


def load_training_data(path: str, dataset: str):
    """(train_x, train_y, test_x, test_y) as uint8 NHWC / int arrays.

    ``path`` is a folder with ``train.npz`` and ``test.npz`` (keys x, y), or a folder that the
    data loaders recognise (CIFAR python pickles, image folders with train/ and test/).
    """
    train_npz, test_npz = os.path.join(path, "train.npz"), os.path.join(path, "test.npz")
    if os.path.isfile(train_npz):
        from pmsm_compiler.data import load_npz

        tr = load_npz(train_npz)
        te = load_npz(test_npz) if os.path.isfile(test_npz) else None
    else:
        from pmsm_compiler.data import load_dataset

        tr = load_dataset(path, split="train")
        te = load_dataset(path, split="test")
    if tr.y is None:
        raise InputError(f"{path}: training data has no labels")
    return tr.x, tr.y, (te.x if te is not None else None), (te.y if te is not None else None)


@command("pmsm-train")
@click.option("--data", "data_path", required=True, type=click.Path(),
              help="Folder with train.npz/test.npz, CIFAR python pickles, or train/ and test/ image folders.")
@click.option("--model", default="resnet20", show_default=True, help="Zoo model name.")
@click.option("--act", type=click.Choice(["pqa", "qcfs", "relu", "clip"]), default="pqa", show_default=True,
              help="clip: float clip(x, αλ, βλ), PQA's range without rounding, to pre-train before fine-tuning "
                   "PQA (or, with --alpha 0, QCFS) with --init-from.")
@click.option("--levels", "-L", default=PQA_LEVELS, show_default=True, help="Quantization levels L.")
@click.option("--lam", default=PQA_LAMBDA, show_default=True, help="Initial λ (ANN threshold).")
@click.option("--alpha", default=PQA_ALPHA, show_default=True, help="PQA lower bound α (fraction of λ).")
@click.option("--beta", default=PQA_BETA, show_default=True, help="PQA upper bound β (fraction of λ).")
@click.option("--epochs", default=600, show_default=True)
@click.option("--batch-size", default=300, show_default=True)
@click.option("--lr", default=0.1, show_default=True)
@click.option("--momentum", default=0.9, show_default=True)
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option("--warmup-epochs", default=0, show_default=True)
@click.option("--seed", default=42, show_default=True)
@click.option("--init-from", "init_from", default="", type=click.Path(),
              help="Start from the weights of this checkpoint.pt (another run, e.g. a ReLU network; λ it lacks "
                   "start at --lam): fine-tuning, with a fresh schedule. See docs/training.md for when it helps.")
@click.option("--spike-penalty", default=0.0, show_default=True,
              help="Add this weight times the mean spike cost per neuron and image to the loss (a surrogate "
                   "gradient; pmsm_compiler.training.spike_cost), to train PQA networks that fire less; e.g. with "
                   "--init-from a trained run.")
@click.option("--penalty-rule", type=click.Choice(["spikes", "events"]), default="spikes", show_default=True,
              help="What the penalty counts: spikes = Σ|k| (Eq. 11), events = Σ 1[k ≠ 0] (one packet per "
                   "firing neuron).")
@click.option("--distill-from", "distill_from", default="", type=click.Path(),
              help="Knowledge distillation: this checkpoint's model (same architecture, e.g. the dense network "
                   "a sparse fine-tune starts from) teaches the student through its soft logits.")
@click.option("--distill-weight", default=DISTILL_WEIGHT, show_default=True,
              help="w in (1 − w)·CE + w·τ²·KL(teacher ‖ student), in [0, 1].")
@click.option("--distill-temperature", default=DISTILL_TEMPERATURE, show_default=True,
              help="τ, the softmax temperature of the distillation term.")
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), default="sgd", show_default=True,
              help="sgd: momentum, decay on every parameter (the paper's); adamw: decay on weight matrices only "
                   "(ViTs from scratch, with e.g. --lr 1e-3 --weight-decay 0.05 --warmup-epochs 5).")
@click.option("--label-smoothing", default=0.0, show_default=True, help="Cross-entropy label smoothing, in [0, 1).")
@click.option("--mixup", default=0.0, show_default=True,
              help="MixUp with Beta(a, a), a > 0 (0: off); with --cutmix too, one of the two per batch.")
@click.option("--cutmix", default=0.0, show_default=True, help="CutMix with Beta(a, a), a > 0 (0: off).")
@click.option("--dataset", type=click.Choice(["cifar10", "cifar100", "imagenet"]), default="cifar10",
              show_default=True, help="Sets the normalization and the number of classes.")
@click.option("--threads", default=0, help="torch CPU threads (0: torch's default).")
@click.option("--max-steps", default=0, help="Stop after this many optimizer steps (smoke tests).")
@click.option("--eval-every", default=1, show_default=True,
              help="Evaluate on the test set every N epochs (and after the last); on a CPU a 10k-image "
                   "evaluation costs about a tenth of a ResNet-20 epoch.")
@click.option("--out", "out_dir", default="runs/train", show_default=True, type=click.Path(),
              help="Folder for checkpoint.pt, summary.json, train.log and model.onnx.")
@click.option("--level-shift", default="", metavar="LAYERS",
              help="Comma-separated activations (a residual block's act1, e.g. layers.4.act1) whose levels run "
                   "shifted by -αL, so that their lower cap is the silent level: the same function, fewer spikes "
                   "where most neurons sit at the lower cap (docs/sparse.md; bench/level_shift_probe.py "
                   "suggests the layers). Weights from --init-from trained unshifted are adapted.")
@click.option("--ema", default=0.0, show_default=True, metavar="DECAY",
              help="Deliver an exponential moving average of the weights (decay in (0, 1), e.g. 0.999; BatchNorm "
                   "statistics and λ averaged too; 0: the last weights): checkpoint.pt's model, the test accuracy "
                   "and model.onnx are the average's, the last weights are logged beside it (test_acc_live).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help=f"Continue from OUT/checkpoint.pt, else from OUT/{COMPACT_CHECKPOINT}.")
@click.option("--compact-checkpoint", is_flag=True,
              help=f"Also write OUT/{COMPACT_CHECKPOINT} each epoch: float16 weights, no optimizer state, small "
                   f"enough to commit; resuming from it restarts the optimizer (lr ramped over "
                   f"{COMPACT_RESUME_RAMP_STEPS} steps).")
@click.option("--export/--no-export", default=True, show_default=True, help="Export model.onnx at the end.")
@json_option("Also write the run's summary (configuration, per-epoch history, final accuracy) here as JSON; "
             "it is always written to OUT/summary.json.")
@progress_option
@verbosity(quiet_help="Print only errors and the final summary line (train.log still gets every line).",
           verbose_help="Also the full training configuration at the start.")
@cli_errors
def main(data_path, model, act, levels, lam, alpha, beta, epochs, batch_size, lr, momentum, weight_decay,
         warmup_epochs, seed, init_from, spike_penalty, penalty_rule, distill_from, distill_weight,
         distill_temperature, optimizer, label_smoothing, mixup, cutmix, dataset, threads, max_steps, eval_every,
         out_dir, level_shift, ema, resume, compact_checkpoint, export, json_path, progress, verbosity):
    """Train MODEL on CIFAR-style data with a quantized activation; checkpoint every epoch."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("pmsm-train needs PyTorch: pip install 'pmsm-compiler[torch]'") from None
    from pmsm_compiler.data import NORMALIZATIONS
    from pmsm_compiler.training.trainer import TrainConfig, command_log_line, train

    if not os.path.exists(data_path):
        raise InputError(f"data path not found: {data_path}")
    if init_from and not os.path.isfile(init_from):
        raise InputError(f"--init-from: no such file: {init_from}")
    if distill_from and not os.path.isfile(distill_from):
        raise InputError(f"--distill-from: no such file: {distill_from}")
    if not 0 <= distill_weight <= 1:
        raise InputError(f"--distill-weight must be in [0, 1], got {distill_weight}")
    if not 0 < distill_temperature < float("inf"):
        raise InputError(f"--distill-temperature must be a finite number > 0, got {distill_temperature}")
    if not 0 <= label_smoothing < 1:
        raise InputError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
    for flag, value in (("--mixup", mixup), ("--cutmix", cutmix)):
        if not 0 <= value < float("inf"):
            raise InputError(f"{flag} must be a finite number >= 0 (the Beta parameter; 0 = off), got {value}")
    if eval_every < 1:
        raise InputError(f"--eval-every must be >= 1, got {eval_every}")
    if not spike_penalty >= 0 or spike_penalty == float("inf"):
        raise InputError(f"--spike-penalty must be a finite number >= 0, got {spike_penalty}")
    if spike_penalty and act not in ("pqa", "qcfs"):
        raise InputError(f"--spike-penalty needs quantized activations (--act pqa or qcfs), not {act}")
    if not (ema == 0 or 0 < ema < 1):
        raise InputError(f"--ema must be 0 (off) or a decay in (0, 1), got {ema}")
    if json_path:
        from pmsm_compiler.loading import check_output_path

        json_path = check_output_path(json_path, "the JSON summary")
    num_classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}[dataset]
    cfg = TrainConfig(model=model, act=act, levels=levels, lam=lam, alpha=alpha, beta=beta, epochs=epochs,
                      batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      warmup_epochs=warmup_epochs, seed=seed, num_classes=num_classes, dataset=dataset,
                      threads=threads, max_steps=max_steps, eval_every=eval_every,
                      init_from=os.path.abspath(init_from) if init_from else "", spike_penalty=spike_penalty,
                      penalty_rule=penalty_rule,
                      distill_from=os.path.abspath(distill_from) if distill_from else "",
                      distill_weight=distill_weight, distill_temperature=distill_temperature,
                      optimizer=optimizer, label_smoothing=label_smoothing, mixup=mixup, cutmix=cutmix,
                      compact_checkpoint=compact_checkpoint, level_shift=level_shift, ema=ema)
    try:
        cfg.act_spec().make()
        if level_shift:  # the names must exist before any data is read: the model train() will build
            from pmsm_compiler.training.trainer import model_for_config

            model_for_config(asdict(cfg))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    train_x, train_y, test_x, test_y = load_training_data(data_path, dataset)
    mean, std = NORMALIZATIONS[dataset]
    os.makedirs(out_dir, exist_ok=True)
    log_path = os.path.join(out_dir, "train.log")

    is_main = int(os.environ.get("RANK", "0")) == 0

    def log(line, summary=False):
        if not is_main:  # under torchrun only rank 0 logs
            return
        if summary or verbosity >= NORMAL:
            click.echo(line)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    log(command_log_line(sys.argv))
    if verbosity >= VERBOSE and is_main:
        click.echo("configuration: " + json.dumps(asdict(cfg)))
    summary = train(cfg, train_x, train_y, test_x, test_y, out_dir, mean, std, resume=resume,
                    progress=show_progress(progress, verbosity), log=log)
    net = summary.pop("model")
    if export and is_main:
        from pmsm_compiler.training.export import export_onnx

        onnx_path = os.path.join(out_dir, "model.onnx")
        export_onnx(net.cpu().to(memory_format=__import__("torch").contiguous_format), onnx_path,
                    input_shape=(1,) + tuple(np.transpose(train_x[:1], (0, 3, 1, 2)).shape[1:]),
                    metadata={"normalization": {"mean": list(mean), "std": list(std)},
                              "training": {k: v for k, v in summary.items() if k != "history"}})
        log(f"exported {onnx_path}")
    if json_path and is_main:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps(summary, indent=1) + "\n", json_path)
    log(json.dumps({"epochs_done": summary["epochs_done"], "final_test_acc": summary["final_test_acc"],
                    "wall_s": summary["wall_s"]}), summary=True)


if __name__ == "__main__":  # pragma: no cover - torchrun -m pmsm_compiler.cli.train
    main()
