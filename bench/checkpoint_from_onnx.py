"""Turn a shipped ANN ONNX model back into a pmsm-train checkpoint, to continue its training.

The shipped models are exported with each BatchNorm folded into the conv before it
(Conv(x; W', b') with W' = W·γ/σ, b' = β − μ·γ/σ), and their training checkpoints are not in the
repo. To train such a model further (a warm restart: ``pmsm-train --init-from`` this checkpoint),
each BN is rebuilt so that

* in eval mode the network is the ONNX model exactly up to float rounding: the conv keeps W', and
  BN(z) = γ̃·(z − m)/√(v + ε) + β̃ with γ̃ = √(v + ε), β̃ = m + b' gives z + b';
* in train mode, where BN uses the batch's statistics, it is nearly the same function: (m, v)
  are the per-channel mean and variance of W'·x measured on training images, so a batch's own
  statistics are close to them and the first steps do not renormalise the network away.

The λ of every quantized activation and the classifier come straight from the ONNX initializers.
The script checks both claims: eval-mode accuracy against onnxruntime's on the test images, and
how far train-mode logits move from eval-mode ones on one batch.

    python bench/checkpoint_from_onnx.py --onnx models/resnet20_pqa_cifar10.onnx \\
        --data /work/shared/data/cifar10 --out /work/runs/from_onnx/resnet20_pqa.pt
"""

from __future__ import annotations

import json
import os
import sys

import click
import numpy as np


def _bn_name(conv_name: str) -> str:
    """The BatchNorm module that follows a conv in pmsm_compiler/training/zoo/resnet.py."""
    head, _, tail = conv_name.rpartition(".")
    if tail.startswith("conv"):
        return f"{head}.bn{tail[4:]}"
    if tail.isdigit():  # stem.0 -> stem.1, shortcut.0 -> shortcut.1
        return f"{head}.{int(tail) + 1}"
    raise ValueError(f"no BatchNorm known to follow conv {conv_name!r}")


def _level_shift_constants(proto, shifted: list[str], inits: dict) -> set[str]:
    """The one-element initializers a level shift writes into the graph: the fill of each Pad and
    the constant operand of each node that feeds a shifted activation (``level_shift.py``)."""
    if not shifted:
        return set()
    producer = {out: n for n in proto.graph.node for out in n.output}
    names = set()
    for node in proto.graph.node:
        if node.op_type == "Pad" and len(node.input) > 2:
            names.add(node.input[2])
        if node.name in shifted and node.input[0] in producer:
            names.update(i for i in producer[node.input[0]].input if i in inits and inits[i].size == 1)
    return {n for n in names if n in inits and inits[n].size == 1}


def model_from_onnx(onnx_path: str, card_data: dict, calib_uint8_nhwc: np.ndarray):
    """The trainable network of a BN-folded ANN ONNX model, BatchNorm rebuilt (module docstring)."""
    import onnx
    import torch
    from onnx import numpy_helper

    from pmsm_compiler.training.activations import ActivationSpec, quantized_activations
    from pmsm_compiler.training.level_shift import apply_level_shift
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.trainer import Normalizer

    spec = ActivationSpec(**card_data["activation"])  # the card holds the spec's fields (ship_model)
    model = build_model(card_data["architecture"], num_classes=card_data["num_classes"], act=spec)
    apply_level_shift(model, card_data.get("level_shift", []))  # a shifted model's Pad fill is m·s, from λ
    norm = Normalizer(card_data["normalization"]["mean"], card_data["normalization"]["std"])
    proto = onnx.load(onnx_path)
    inits = {i.name: numpy_helper.to_array(i).copy() for i in proto.graph.initializer}
    own = model.state_dict()
    modules = dict(model.named_modules())
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    used = set()
    with torch.no_grad():
        for node in convs:
            if len(node.input) < 3 or not node.input[2]:
                raise ValueError(f"conv {node.name or node.input[1]} has no bias: not a BN-folded export")
            w_name, b_name = node.input[1], node.input[2]
            conv = w_name[: -len(".weight")]
            bn = modules[_bn_name(conv)]
            own[f"{conv}.weight"].copy_(torch.from_numpy(inits[w_name]))
            # Exact eval-mode start: statistics (0, 1 − ε) and γ = 1 make BN(z) = z + b'.
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(inits[b_name]))
            used.update((w_name, b_name))
        for name, _ in quantized_activations(model):
            if f"{name}.lam" not in inits:
                # The exporter shares one initializer between equal constants (λ never trained).
                raise ValueError(f"no initializer {name}.lam in the ONNX model (λ shared or renamed)")
            own[f"{name}.lam"].copy_(torch.from_numpy(inits[f"{name}.lam"]))
            used.add(f"{name}.lam")
        for key in ("fc.weight", "fc.bias"):
            own[key].copy_(torch.from_numpy(inits[key]))
            used.add(key)
    # Integer initializers are shape constants (ReduceMean axes, Reshape shape), not weights; a level
    # shift's m·s (the Pad fill before conv2, the constant added before act1) comes from λ.
    used |= _level_shift_constants(proto, card_data.get("level_shift", []), inits)
    left = sorted(k for k in set(inits) - used if inits[k].dtype.kind == "f")
    if left:
        raise ValueError(f"{len(left)} ONNX initializer(s) not placed (first: {left[0]})")
    calib = torch.from_numpy(np.ascontiguousarray(calib_uint8_nhwc))

    # Per-channel statistics of W'·x (the BN inputs), measured in eval mode, where the rebuilt
    # network is the ONNX one.
    sums: dict[str, list] = {}

    def hook(name):
        def fn(_module, inputs):
            z = inputs[0].double()
            s = sums.setdefault(name, [0.0, 0.0, 0])
            s[0] = s[0] + z.sum((0, 2, 3))
            s[1] = s[1] + (z * z).sum((0, 2, 3))
            s[2] += z.numel() // z.shape[1]
        return fn

    bns = {_bn_name(n.input[1][: -len(".weight")]) for n in convs}
    handles = [modules[b].register_forward_pre_hook(hook(b)) for b in bns]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(calib), 500):
            model(norm(calib[i:i + 500]))
    for h in handles:
        h.remove()
    with torch.no_grad():
        for b in bns:
            s0, s1, n = sums[b]
            m = s0 / n
            v = (s1 / n - m * m).clamp_min(0)
            bn = modules[b]
            b_prime = bn.bias.detach().double().clone()
            bn.running_mean.copy_(m.float())
            bn.running_var.copy_(v.float())
            bn.weight.copy_(torch.sqrt(v + bn.eps).float())
            bn.bias.copy_((m + b_prime).float())

    return model, norm


@click.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--card", default="", help="Model card JSON (default: next to the ONNX file).")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--calibration-images", default=5000, show_default=True,
              help="Training images for each BN's mean and variance.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--threads", default=0, help="torch threads (0: torch's default).")
def main(onnx_path, card, data_path, calibration_images, out_path, threads):
    import torch

    from pmsm_compiler.cli.train import load_training_data
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.training.trainer import evaluate

    if threads:
        torch.set_num_threads(threads)
    card_path = card or os.path.splitext(onnx_path)[0] + ".json"
    with open(card_path) as f:
        card_data = json.load(f)
    train_x, _, test_x, test_y = load_training_data(data_path, "cifar10")
    rng = np.random.default_rng(0)
    calib = train_x[rng.choice(len(train_x), min(calibration_images, len(train_x)), replace=False)]
    try:
        model, norm = model_from_onnx(onnx_path, card_data, calib)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    calib = torch.from_numpy(np.ascontiguousarray(calib))

    # Check 1: eval-mode accuracy against onnxruntime's, same test images.
    xt, yt = torch.from_numpy(test_x), torch.from_numpy(test_y.astype(np.int64))
    acc_torch = evaluate(model, xt, yt, norm, torch.device("cpu"))
    with open(onnx_path, "rb") as f:
        sess = make_session(f.read(), "all")  # the level of the cards' onnxruntime figure
    inp = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(xt), 1000):
        xb = norm(xt[i:i + 1000]).numpy()
        correct += int((sess.run(None, {inp: xb})[0].argmax(1) == test_y[i:i + 1000]).sum())
    acc_ort = correct / len(xt)
    # Check 2: train-mode logits against eval-mode ones on one batch of 128 training images. A
    # train-mode forward updates BatchNorm's running statistics: the checkpoint is the state before it
    # (saving the state after it cost 0.3 points: 87.71 % for the shipped ResNet-20, not 87.98 %).
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batch = norm(calib[:128])
    with torch.no_grad():
        model.eval()
        le = model(batch)
        model.train()
        lt = model(batch)
        model.eval()
    model.load_state_dict(state)
    agree = float((le.argmax(1) == lt.argmax(1)).float().mean())
    print(f"eval-mode accuracy: PyTorch {acc_torch:.4f}, onnxruntime {acc_ort:.4f}; "
          f"train-mode vs eval-mode on one batch: {agree:.1%} same predictions, "
          f"max |Δlogit| {float((le - lt).abs().max()):.3f}")
    if abs(acc_torch - acc_ort) > 0.002:
        raise click.ClickException(f"rebuilt network is not the ONNX model: {acc_torch:.4f} vs {acc_ort:.4f}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = out_path + ".tmp"
    torch.save({"model": state, "source_onnx": os.path.abspath(onnx_path),
                "source_sha256": card_data.get("sha256"), "source_card": card_data, "eval_acc_pytorch": acc_torch,
                "eval_acc_onnxruntime": acc_ort}, tmp)
    os.replace(tmp, out_path)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    sys.exit(main())
