"""Ship a trained model: export a pmsm-train checkpoint to models/<name>.onnx with a model card.

    python bench/ship_model.py --run /root/pmsm-runs/resnet20_pqa --name resnet20_pqa_cifar10 \
        --data ../shared/data/cifar10 [--snn-t1]

The card (models/<name>.json) records the data (and that it was re-decoded from JPEG), the exact
training command (for a run resumed across sessions, the last session's, and each changed
command with the epoch it started from) and seed, epochs, wall time, the ANN's accuracy measured here in onnxruntime on
the full test set, and the SHA-256 of the ONNX file. A run fine-tuned from another
(``pmsm-train --init-from``) also records that run: its command, epochs, wall time and accuracy
(read from the folder of the checkpoint it started from, or, for a checkpoint that
bench/checkpoint_from_onnx.py made from a shipped model, from that model's card), and the total
wall time of all stages. A fine-tune records its spike penalty and its teacher (``--spike-penalty``,
``--distill-from``). With ``--snn-t1`` the card also holds the SNN's figures at T = 1 on the full test
set (exact mode, with its ANN beside it: accuracy, prediction agreement, spikes and events per image,
energy), measured as bench/spike_front.py measures a point of its front. A run trained with
``--level-shift`` is exported with its shift, and the card lists the shifted layers (``level_shift``).
``--weights-float16`` stores the large weights as float16 behind Casts (half the file; a ViT's
float32 file is over the repository's 5 MiB limit for a file): the shipped model is the trained
one with those weights rounded to float16, and every figure on its card is measured on that file.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(os.path.dirname(HERE), "models")


def last_command(sessions: list[dict]) -> str | None:
    """The last session's command: the one a resumed run was finished with."""
    return sessions[-1]["command"] if sessions else None


def distinct_commands(sessions: list[dict]) -> list[dict]:
    """Sessions with a changed command only (a plain resume repeats the previous command)."""
    out = []
    for s in sessions:
        if not out or out[-1]["command"] != s["command"]:
            out.append(s)
    return out


def pretraining_of(cfg) -> dict | None:
    """What the run started from (``--init-from``): that run's command, budget and accuracy."""
    import torch

    from pmsm_compiler.training.trainer import read_train_log

    if not cfg.get("init_from"):
        return None
    source = cfg["init_from"]
    if not os.path.exists(source):
        raise SystemExit(f"error: the run was initialized from {source}, which is gone: cannot describe it")
    state = torch.load(source, map_location="cpu", weights_only=False)
    if "source_card" in state:
        # Made by bench/checkpoint_from_onnx.py from a shipped model: that model's card tells
        # how it was trained (and, nested, what it was itself trained from).
        prior = state["source_card"]
        return {**prior["training"], **({"pretraining": prior["pretraining"]} if "pretraining" in prior else {}),
                "activation": prior["activation"]["kind"], "shipped_as": prior["file"],
                "shipped_sha256": prior["sha256"], "ann_accuracy_onnxruntime": prior["ann_accuracy_onnxruntime"],
                "converted_by": "bench/checkpoint_from_onnx.py (BatchNorm rebuilt around the folded convs)"}
    pcfg, history = state["config"], state["history"]
    act = {"activation": pcfg["act"]}
    if pcfg["act"] == "clip":  # the float pre-training's range, clip(x, αλ, βλ)
        act["clip_range"] = {"lam": pcfg["lam"], "alpha": pcfg["alpha"], "beta": pcfg["beta"]}
    earlier = pretraining_of(pcfg)  # a chain of fine-tunes: each stage says what it started from
    return {"command": last_command(read_train_log(os.path.dirname(source))), **act, "seed": pcfg["seed"],
            "epochs_planned": pcfg["epochs"], "epochs_done": state["epoch"], "batch_size": pcfg["batch_size"],
            "lr": pcfg["lr"], "weight_decay": pcfg["weight_decay"], "warmup_epochs": pcfg.get("warmup_epochs", 0),
            "wall_time_s": round(state.get("wall_s", 0.0), 1),
            "final_test_acc_pytorch": history[-1].get("test_acc") if history else None, **fine_tuning_of(pcfg),
            **({"pretraining": earlier} if earlier else {})}


def fine_tuning_of(cfg) -> dict:
    """The spike penalty and the teacher of a run, where it had them."""
    keys = (("spike_penalty", "penalty_rule") if cfg.get("spike_penalty") else ()) + \
        (("distill_from", "distill_weight", "distill_temperature") if cfg.get("distill_from") else ())
    return {k: repository_path(cfg[k]) if k == "distill_from" else cfg[k] for k in keys}


def repository_path(path: str) -> str:
    """A path inside this repository relative to its root (pmsm-train records absolute ones): a
    card names no folder of the machine it was made on."""
    root = os.path.dirname(HERE)
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if full.startswith(root + os.sep) else path


def _total_wall(stage: dict) -> float:
    """Wall time of a stage and of every stage before it."""
    return stage["wall_time_s"] + (_total_wall(stage["pretraining"]) if "pretraining" in stage else 0.0)


def snn_t1(onnx_path: str, test) -> dict:
    """The SNN at T = 1 on ``test`` (exact mode, beside its ANN), as a point of bench/spike_front.py."""
    sys.path.insert(0, HERE)
    from spike_front import measure

    from pmsm_compiler.runtime.report import E_AC_PJ

    m = measure(onnx_path, test, 500)
    return {"mode": "exact", "timesteps": 1, "images": len(test.x),
            **{k: m[k] for k in ("accuracy", "ann_accuracy", "t1_prediction_agreement", "spikes_per_image",
                                 "events_per_image", "negative_spikes_per_image", "spikes_per_neuron",
                                 "energy_per_image_uj")},
            "counting": f"spikes = sum |k| (paper Eq. 11), events = sum 1[k != 0]; energy = SOPs x {E_AC_PJ} pJ",
            "measured_by": "bench/ship_model.py --snn-t1 (bench/spike_front.py's measure)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="pmsm-train output folder (checkpoint.pt, train.log)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, help="folder with test.npz")
    ap.add_argument("--out-dir", default=MODELS)
    ap.add_argument("--snn-t1", action="store_true",
                    help="also compile in exact mode and record the SNN's figures at T = 1 on the test set")
    ap.add_argument("--weights-float16", action="store_true",
                    help="store the weight tensors as float16 behind a Cast (half the file size; pmsm-export "
                         "--weights-float16)")
    args = ap.parse_args(argv)

    import torch

    from pmsm_compiler.training.activations import ActivationSpec
    from pmsm_compiler.data import NORMALIZATIONS, load_npz, normalize
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.defaults import FLOAT16_MIN_ELEMENTS
    from pmsm_compiler.metadata import get_metadata
    from pmsm_compiler.training.export import METADATA_KEY, export_onnx
    from pmsm_compiler.training.level_shift import parse_layers
    from pmsm_compiler.training.trainer import model_for_config, read_train_log

    state = torch.load(os.path.join(args.run, "checkpoint.pt"), map_location="cpu", weights_only=False)
    cfg = state["config"]
    spec = ActivationSpec(cfg["act"], cfg["levels"], cfg["lam"], cfg["alpha"], cfg["beta"])
    net = model_for_config(cfg)  # with its level shift, if the run had one
    net.load_state_dict(state["model"])
    net.eval()
    mean, std = NORMALIZATIONS[cfg.get("dataset", "cifar10")]
    onnx_path = os.path.join(args.out_dir, args.name + ".onnx")
    history = state["history"]
    exported = export_onnx(net, onnx_path, metadata={"normalization": {"mean": list(mean), "std": list(std)},
                                                     "model_card": args.name + ".json"},
                           weights_float16=args.weights_float16)
    float16_tensors = get_metadata(exported, METADATA_KEY).get("weights_float16", [])
    test = load_npz(os.path.join(args.data, "test.npz"))
    sess = make_session(open(onnx_path, "rb").read(), "all")
    correct = 0
    for i in range(0, len(test.x), 500):
        x = normalize(test.x[i:i + 500], mean, std)
        correct += int((sess.run(None, {"input": x})[0].argmax(1) == test.y[i:i + 500]).sum())
    acc = correct / len(test.x)
    sessions = read_train_log(args.run)
    changed = distinct_commands(sessions)
    pretraining = pretraining_of(cfg)
    with torch.no_grad():
        lams = {n: round(float(m.lam), 6) for n, m in net.named_modules() if hasattr(m, "lam")}
    card = {
        "name": args.name,
        "file": args.name + ".onnx",
        "sha256": hashlib.sha256(open(onnx_path, "rb").read()).hexdigest(),
        "architecture": cfg["model"], "activation": spec.__dict__, "num_classes": cfg["num_classes"],
        # activations whose levels run shifted by -αL (pmsm_compiler.training.level_shift): PQA(α = 0, β − α)
        **({"level_shift": parse_layers(cfg["level_shift"])} if cfg.get("level_shift") else {}),
        "data": {"dataset": "CIFAR-10", "train": "50,000 training images", "test": "10,000 test images",
                 "note": "re-decoded from a JPEG (quality 75, 4:2:0) copy of CIFAR-10 (PSNR about 30 dB against "
                         "the originals); accuracies are somewhat below what the original pixels give"},
        "normalization": {"mean": list(mean), "std": list(std)},
        "training": {"command": last_command(sessions),
                     **({"commands_by_start_epoch": changed} if len(changed) > 1 else {}),
                     "sessions": len(sessions), "seed": cfg["seed"], "epochs_planned": cfg["epochs"],
                     "epochs_done": state["epoch"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
                     "weight_decay": cfg["weight_decay"], "warmup_epochs": cfg.get("warmup_epochs", 0),
                     "schedule": "cosine over the planned epochs", "wall_time_s": round(state.get("wall_s", 0.0), 1),
                     "hardware": "2 CPU cores", "final_test_acc_pytorch": history[-1].get("test_acc") if history else None,
                     **fine_tuning_of(cfg)},
        **({"pretraining": pretraining,
            "total_wall_time_s": round(state.get("wall_s", 0.0) + _total_wall(pretraining), 1)}
           if pretraining else {}),
        **({"weights_storage": {
            "float16_tensors": len(float16_tensors), "min_elements": FLOAT16_MIN_ELEMENTS,
            "note": "these weight tensors are stored as float16 and Cast to float32: the model is the trained one "
                    "with them rounded to float16, computing in float32; every accuracy on this card but "
                    "final_test_acc_pytorch is measured on this file"}} if float16_tensors else {}),
        "ann_accuracy_onnxruntime": acc,
        "ann_accuracy_measured_on": "the 10,000-image test set (JPEG re-decoded), onnxruntime ORT_ENABLE_ALL",
        **({"snn_t1": snn_t1(onnx_path, test)} if args.snn_t1 else {}),
        "lambdas": lams,
        "created": datetime.date.today().isoformat(),
    }
    with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    print(json.dumps({k: card[k] for k in ("name", "sha256", "ann_accuracy_onnxruntime")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
