"""bench/checkpoint_from_onnx.py: a BN-folded ANN ONNX model back to a trainable PyTorch network.

The shipped models were continued from their ONNX files this way, so the rebuild must give the
ONNX model's function in eval mode, and the same function in train mode on the images its BN
statistics were measured on.
"""

import json

import numpy as np
import pytest
import torch

from pmsm_compiler.sessions import make_session
from pmsm_compiler.training.activations import ActivationSpec
from pmsm_compiler.training.export import export_onnx
from pmsm_compiler.training.zoo import build_model

from bench_scripts import load_bench_script

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616]


def _script():
    return load_bench_script("checkpoint_from_onnx")


def _far_from_identity(net):
    """BN statistics and affine parameters far from identity (a fold of identity BatchNorms leaves
    convolutions without a bias), and every λ its own: trained λ differ, and equal ones would be
    exported as one initializer."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if hasattr(m, "lam"):
                m.lam.uniform_(1.0, 3.0)
    return net


def _export(tmp_path_factory, act):
    torch.manual_seed(0)
    spec = ActivationSpec(act, 8, 2.0, -0.25, 1.0)
    net = _far_from_identity(build_model("resnet20", num_classes=10, act=spec))
    path = tmp_path_factory.mktemp(act) / "net.onnx"
    export_onnx(net.eval(), str(path))
    card = {"architecture": "resnet20", "num_classes": 10, "activation": spec.__dict__,
            "normalization": {"mean": MEAN, "std": STD}}
    images = np.random.default_rng(1).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    return net, path, card, images


# The BN arithmetic is checked on a ReLU network: in a quantized one, float rounding moves some
# inputs across a level boundary, and on random weights and images one such flip spreads.
@pytest.fixture(scope="module")
def relu_net(tmp_path_factory):
    return _export(tmp_path_factory, "relu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(tmp_path_factory, "pqa")


def test_eval_mode_is_the_onnx_model(relu_net):
    _, path, card, images = relu_net
    model, norm = _script().model_from_onnx(str(path), card, images)
    x = norm(torch.from_numpy(images))
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    ort = make_session(path.read_bytes(), "all").run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(ours, ort, rtol=0, atol=1e-4 * np.abs(ort).max())


def test_train_mode_on_the_calibration_images_is_eval_mode(relu_net):
    # BN's batch statistics on the images it was calibrated on are its running statistics.
    _, path, card, images = relu_net
    model, norm = _script().model_from_onnx(str(path), card, images)
    x = norm(torch.from_numpy(images))
    with torch.no_grad():
        ev = model.eval()(x)
        tr = model.train()(x)
    np.testing.assert_allclose(tr.numpy(), ev.numpy(), rtol=0, atol=1e-4 * float(ev.abs().max()))


def test_every_lambda_comes_from_the_onnx_model(exported):
    from pmsm_compiler.training.activations import quantized_activations

    net, path, card, images = exported
    model, _ = _script().model_from_onnx(str(path), card, images)
    original = {n: float(m.lam.detach()) for n, m in quantized_activations(net)}
    rebuilt = {n: float(m.lam.detach()) for n, m in quantized_activations(model)}
    assert rebuilt == original and len(set(rebuilt.values())) == len(rebuilt)


def test_an_unplaced_weight_is_refused(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, path, card, images = exported
    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "stray.weight"))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(ValueError, match="not placed"):
        _script().model_from_onnx(str(bad), card, images)


def test_ship_model_describes_the_stage_before_the_conversion(tmp_path):
    module = load_bench_script("ship_model")
    prior = {"file": "m.onnx", "sha256": "ab", "ann_accuracy_onnxruntime": 0.86, "activation": {"kind": "pqa"},
             "training": {"command": "pmsm-train ... --epochs 45", "epochs_done": 45, "wall_time_s": 100.0}}
    ckpt = tmp_path / "from_onnx.pt"
    torch.save({"model": {}, "source_card": prior}, ckpt)
    stage = module.pretraining_of({"init_from": str(ckpt)})
    assert stage["epochs_done"] == 45 and stage["shipped_sha256"] == "ab" and stage["activation"] == "pqa"
    assert module._total_wall({**stage, "pretraining": {"wall_time_s": 20.0}}) == 120.0
    json.dumps(stage)


def test_ship_model_describes_a_float_clip_pretraining_with_its_range(tmp_path):
    module = load_bench_script("ship_model")
    run = tmp_path / "pre"
    run.mkdir()
    (run / "train.log").write_text("command: pmsm-train --act clip --lam 2 --epochs 26\n{}\n")
    cfg = {"act": "clip", "lam": 2.0, "alpha": -0.25, "beta": 1.0, "seed": 42, "epochs": 26, "batch_size": 128,
           "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 1}
    torch.save({"model": {}, "config": cfg, "epoch": 26, "wall_s": 3600.0,
                "history": [{"epoch": 26, "test_acc": 0.9}]}, run / "checkpoint.pt")
    stage = module.pretraining_of({"init_from": str(run / "checkpoint.pt")})
    assert stage["command"] == "pmsm-train --act clip --lam 2 --epochs 26"
    assert stage["activation"] == "clip" and stage["clip_range"] == {"lam": 2.0, "alpha": -0.25, "beta": 1.0}
    assert stage["epochs_done"] == 26 and stage["wall_time_s"] == 3600.0 and stage["final_test_acc_pytorch"] == 0.9
    json.dumps(stage)


def test_ship_model_lists_only_the_sessions_that_changed_the_command():
    module = load_bench_script("ship_model")
    sessions = [{"command": "pmsm-train --data /a", "from_epoch": 0}, {"command": "pmsm-train --data /a", "from_epoch": 5},
                {"command": "pmsm-train --data ../b --eval-every 5", "from_epoch": 55}]
    assert [s["from_epoch"] for s in module.distinct_commands(sessions)] == [0, 55]
    assert module.last_command(sessions) == "pmsm-train --data ../b --eval-every 5"
    assert module.last_command([]) is None


def test_ship_model_describes_a_chain_of_fine_tunes(tmp_path):
    """A sparse model is fine-tuned in stages; its card names every stage back to the shipped model."""
    module = load_bench_script("ship_model")
    shipped = {"file": "m.onnx", "sha256": "ab", "ann_accuracy_onnxruntime": 0.88, "activation": {"kind": "pqa"},
               "training": {"command": "pmsm-train ... --epochs 120", "epochs_done": 120, "wall_time_s": 1000.0}}
    torch.save({"model": {}, "source_card": shipped}, tmp_path / "init.pt")
    source = tmp_path / "init.pt"
    base = {"act": "pqa", "seed": 42, "batch_size": 128, "lr": 0.003, "weight_decay": 5e-4, "epochs": 2,
            "penalty_rule": "spikes", "distill_weight": 0.5, "distill_temperature": 4.0}
    stages = [{"spike_penalty": 0.5, "distill_from": None}, {"spike_penalty": 0.3, "distill_from": str(source)}]
    for i, extra in enumerate(stages):
        run = tmp_path / f"stage{i}"
        run.mkdir()
        (run / "train.log").write_text(f"command: pmsm-train --stage {i}\n{{}}\n")
        torch.save({"model": {}, "config": {**base, **extra, "init_from": str(source)}, "epoch": 2,
                    "wall_s": 10.0 * (i + 1), "history": [{"test_acc": 0.85 + i / 100}]}, run / "checkpoint.pt")
        source = run / "checkpoint.pt"
    last = module.pretraining_of({"init_from": str(source)})
    assert last["command"] == "pmsm-train --stage 1" and last["spike_penalty"] == 0.3
    assert last["distill_from"].endswith("init.pt") and last["distill_weight"] == 0.5
    first = last["pretraining"]
    assert first["command"] == "pmsm-train --stage 0" and first["spike_penalty"] == 0.5
    assert "distill_from" not in first and "distill_weight" not in first  # no teacher, no teacher's settings
    assert first["pretraining"]["shipped_sha256"] == "ab"
    assert module._total_wall(last) == 20.0 + 10.0 + 1000.0
    assert module.fine_tuning_of({"spike_penalty": 0.0, "penalty_rule": "spikes", "distill_from": None}) == {}
    json.dumps(last)


def test_ship_model_snn_t1_is_lossless_on_a_tiny_model(tmp_path):
    from tiny_models import export_tiny_pair

    from pmsm_compiler.data import load_dataset

    module = load_bench_script("ship_model")
    path = export_tiny_pair(tmp_path)["pqa"]
    test = load_dataset("bundled").evenly_spaced(40)
    figures = module.snn_t1(path, test)
    assert figures["images"] == 40 and figures["mode"] == "exact"
    assert figures["t1_prediction_agreement"] == 1.0 and figures["accuracy"] == figures["ann_accuracy"]
    assert 0 < figures["events_per_image"] <= figures["spikes_per_image"]
    json.dumps(figures)


def test_the_saved_checkpoint_is_the_checked_network(relu_net, tmp_path):
    """main() checks the rebuilt network (eval mode against onnxruntime, then a train-mode forward,
    which moves BatchNorm's running statistics) and saves it: reloaded, the checkpoint computes
    the ONNX model's function, not the one after that train-mode forward."""
    from click.testing import CliRunner

    from pmsm_compiler.training.trainer import Normalizer, load_init_weights

    net, path, card, images = relu_net
    card_path = tmp_path / "net.json"
    card_path.write_text(json.dumps(card))
    data = tmp_path / "data"
    data.mkdir()
    # 512 calibration images: the train-mode check runs on 128 of them, whose statistics are not those
    # of all 512 (half the images are dimmed), so that forward would move the running statistics
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (512, 32, 32, 3), dtype=np.uint8)
    train[::2] //= 4
    labels = np.arange(len(train)) % 10
    np.savez(data / "train.npz", x=train, y=labels)
    np.savez(data / "test.npz", x=images[:32], y=labels[:32])
    out = tmp_path / "init.pt"
    result = CliRunner().invoke(_script().main, ["--onnx", str(path), "--card", str(card_path), "--data", str(data),
                                                 "--calibration-images", "512", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    model = build_model("resnet20", num_classes=10, act="relu")
    load_init_weights(model, str(out))
    x = Normalizer(MEAN, STD)(torch.from_numpy(images[:32]))
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    theirs = make_session(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_level_shifted_model_is_rebuilt_with_its_shift(tmp_path):
    """A card with ``level_shift`` (bench/ship_model.py): the rebuilt network has those blocks shifted,
    takes the shift's constants (Pad fill, the added m·s) from λ, and is the ONNX model in eval mode."""
    from pmsm_compiler.training.level_shift import adopt_unshifted_statistics, apply_level_shift

    torch.manual_seed(3)
    pqa = ActivationSpec("pqa", 4, 2.0, -0.25, 1.0)
    net = _far_from_identity(build_model("resnet20", num_classes=10, act=pqa))
    shifted = ["layers.4.act1", "layers.7.act1"]
    apply_level_shift(net, shifted)
    adopt_unshifted_statistics(net, shifted)
    path = tmp_path / "shifted.onnx"
    export_onnx(net.eval(), str(path))
    card = {"architecture": "resnet20", "num_classes": 10, "activation": pqa.__dict__, "level_shift": shifted,
            "normalization": {"mean": MEAN, "std": STD}}
    images = np.random.default_rng(1).integers(0, 256, (96, 32, 32, 3), dtype=np.uint8)
    model, norm = _script().model_from_onnx(str(path), card, images)
    assert [n for n in shifted if dict(model.named_modules())[n.rsplit(".", 1)[0]].level_shift == 1] == shifted
    x = norm(torch.from_numpy(images))
    with torch.no_grad():
        ours = model.eval()(x).numpy()
    theirs = make_session(path.read_bytes(), "all").run(None, {"input": x.numpy()})[0]
    # quantized: float rounding may move a level at a tie (max |Δlogit| 0.03 here), not a prediction
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    # without the card's shift the constants are weights nobody placed
    with pytest.raises(ValueError, match="not placed"):
        _script().model_from_onnx(str(path), {**card, "level_shift": []}, images)
