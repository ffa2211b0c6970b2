"""Level shift (pmsm_compiler.training.level_shift): a residual block's act1 with its levels shifted
by m = −αL computes the same function with level k + m, the spike count changes by |k + m| − |k|
per neuron, the exported model compiles lossless at T = 1, and pmsm-train applies it to weights
trained without it (and refuses the reverse)."""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pmsm_compiler.data import NORMALIZATIONS, load_bundled_sample
from pmsm_compiler.training.activations import ActivationSpec
from pmsm_compiler.training.level_shift import (adopt_unshifted_statistics, apply_level_shift, shift_effect,
                                                shiftable_layers)
from pmsm_compiler.training.trainer import Normalizer, TrainConfig, train
from pmsm_compiler.training.zoo import build_model

MEAN, STD = NORMALIZATIONS["cifar10"]
L4 = ActivationSpec("pqa", 4, 2.0, -0.25, 1.0)
ACT1 = ["layers.0.act1", "layers.1.act1", "layers.2.act1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images():
    ds = load_bundled_sample()
    return ds.x[:64], ds.y[:64]


def trained_like(seed=0):
    """resnet_tiny at L = 4 with BatchNorm statistics from real images and small λ, so that many
    neurons sit at the lower cap, as in a trained network's deeper blocks."""
    torch.manual_seed(seed)
    model = build_model("resnet_tiny", num_classes=10, act=L4)
    for name, block in shiftable_layers(model).items():
        with torch.no_grad():
            block.act1.lam.fill_(0.5)
            block.bn1.bias.fill_(-0.3)  # most inputs below −s/2: the lower cap
    x = Normalizer(MEAN, STD)(torch.from_numpy(load_bundled_sample().x[:256]))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


def act1_levels(model, x):
    levels = {}
    hooks = [b.act1.register_forward_hook(lambda m, i, o, n=n: levels.__setitem__(n, m.levels_of(o)))
             for n, b in shiftable_layers(model).items()]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, levels


def test_shift_keeps_the_function_and_moves_every_level_by_m(images):
    x = Normalizer(MEAN, STD)(torch.from_numpy(images[0]))
    plain = trained_like()
    shifted = copy.deepcopy(plain)
    apply_level_shift(shifted, ACT1)
    adopt_unshifted_statistics(shifted, ACT1)
    shifted.eval()
    for name, block in shiftable_layers(shifted).items():
        assert block.level_shift == 1 and (block.act1.k_min, block.act1.k_max) == (0, 5)
        assert block.conv2.padding == (0, 0)
    logits0, k0 = act1_levels(plain, x)
    logits1, k1 = act1_levels(shifted, x)
    # equal in exact arithmetic; in float32 a level may move at a rounding tie: none does here
    for name in ACT1:
        assert torch.equal(k1[name], k0[name] + 1), name
    torch.testing.assert_close(logits1, logits0, rtol=0, atol=1e-4)
    assert torch.equal(logits1.argmax(1), logits0.argmax(1))
    # the spike count per layer changes by |k + 1| − |k|: −1 at the lower cap, +1 everywhere else
    for name in ACT1:
        p = float((k0[name] == -1).float().mean())
        change = float((k1[name].abs().sum() - k0[name].abs().sum()) / k0[name].numel())
        assert change == pytest.approx(1 - 2 * p, abs=1e-6), name
    effects = shift_effect(plain, x)
    assert set(effects) == set(ACT1) and max(e["lower_cap"] for e in effects.values()) > 0.5
    for name in ACT1:  # what shift_effect predicts is what the shift did
        change = float((k1[name].abs().sum() - k0[name].abs().sum()) / k0[name].numel())
        assert effects[name]["spikes_change"] == pytest.approx(change, abs=1e-6), name
        assert effects[name]["neurons"] == k0[name][0].numel()
    assert shift_effect(shifted, x) == {}  # nothing left to shift


def test_shift_refuses_what_it_cannot_shift():
    model = build_model("resnet_tiny", num_classes=10, act=L4)
    with pytest.raises(ValueError, match=r"layers\.0\.act2 cannot be shifted.*layers\.0\.act1"):
        apply_level_shift(model, ["layers.0.act2"])
    unsigned = build_model("resnet_tiny", num_classes=10, act=ActivationSpec("pqa", 4, 2.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="no negative levels"):
        apply_level_shift(unsigned, ["layers.0.act1"])


def test_shifted_model_exports_and_compiles_lossless_at_t1(images, tmp_path):
    from pmsm_compiler.pipeline import compile_and_verify
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.training.export import export_onnx

    model = trained_like(1)
    apply_level_shift(model, ACT1)
    adopt_unshifted_statistics(model, ACT1)
    with torch.no_grad():
        model.layers[0].act1.lam.mul_(1.25)  # λ changed after the last forward: the export reads it now
    proto = export_onnx(model, str(tmp_path / "shifted.onnx"))
    pads = [n for n in proto.graph.node if n.op_type == "Pad"]
    assert len(pads) == len(ACT1)
    from pmsm_compiler.onnx_utils import const_value
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    fills = sorted(float(const_value(n.inputs[2])) for n in graph.nodes if n.op == "Pad")
    assert fills == pytest.approx(sorted(float(b.act1.lam.detach()) / 4 for b in shiftable_layers(model).values()))
    for mode in ("exact", "folded"):
        result = compile_and_verify(str(tmp_path / "shifted.onnx"), mode, data="bundled", samples=64)
        assert result.passed, (mode, result.verification["failures"])
        if mode == "exact":
            assert result.verification["level_agreement"] == 1.0 and result.verification["max_abs_diff"] == 0
            x = Normalizer(MEAN, STD)(torch.from_numpy(images[0])).numpy()
            snn = SNNSession(result.model).run_batch(x, 1)
            ann = make_session(result.ann).run(None, {result.ann.graph.input[0].name: x})[0]
            assert np.array_equal(snn.predictions_by_t[0], ann.argmax(1))
            with torch.no_grad():
                assert np.array_equal(model.eval()(torch.from_numpy(x)).argmax(1).numpy(), ann.argmax(1))


def test_train_shifts_unshifted_weights_resumes_only_with_the_same_shift_and_refuses_the_reverse(images, tmp_path):
    x, y = images

    def quiet(_):
        pass

    base = TrainConfig(model="resnet_tiny", act="pqa", levels=4, lam=2.0, batch_size=32, epochs=1, seed=0,
                       threads=1, max_steps=1)
    plain_dir = str(tmp_path / "plain")
    train(base, x, y, None, None, plain_dir, MEAN, STD, progress=False, log=quiet)
    plain_ckpt = os.path.join(plain_dir, "checkpoint.pt")

    lines = []
    cfg = dataclasses.replace(base, epochs=2, init_from=plain_ckpt, level_shift="layers.1.act1,layers.2.act1")
    out = str(tmp_path / "shifted")
    first = train(dataclasses.replace(cfg, max_steps=2), x, y, None, None, out, MEAN, STD, progress=False,
                  log=lines.append)
    assert any("level shift applied to 2 layers trained unshifted" in line for line in lines)
    blocks = shiftable_layers(first["model"])
    assert [n for n, b in blocks.items() if b.level_shift] == ["layers.1.act1", "layers.2.act1"]
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    assert saved["config"]["level_shift"] == "layers.1.act1,layers.2.act1"
    # a changed shift does not resume
    with pytest.raises(ValueError, match=r"level_shift=.*--no-resume"):
        train(dataclasses.replace(cfg, level_shift="layers.1.act1"), x, y, None, None, out, MEAN, STD,
              progress=False, log=quiet)
    # a shifted checkpoint cannot start a run that does not shift those layers
    with pytest.raises(ValueError, match=r"ran layers\.1\.act1, layers\.2\.act1 level-shifted"):
        train(dataclasses.replace(base, init_from=os.path.join(out, "checkpoint.pt")), x, y, None, None,
              str(tmp_path / "back"), MEAN, STD, progress=False, log=quiet)
    # ...but starts one with the same shift, taking its statistics as they are
    lines = []
    train(dataclasses.replace(base, init_from=os.path.join(out, "checkpoint.pt"),
                              level_shift="layers.1.act1,layers.2.act1"), x, y, None, None, str(tmp_path / "again"),
          MEAN, STD, progress=False, log=lines.append)
    assert not any("level shift applied" in line for line in lines)


def test_adopted_statistics_are_the_unshifted_means_plus_m_s_sum_w():
    model = trained_like(2)
    before = {n: b.bn2.running_mean.clone() for n, b in shiftable_layers(model).items()}
    apply_level_shift(model, ["layers.1.act1"])
    adopt_unshifted_statistics(model, ["layers.1.act1"])
    block = shiftable_layers(model)["layers.1.act1"]
    expected = before["layers.1.act1"] + float(block.act1.lam.detach()) / 4 * block.conv2.weight.detach().sum(dim=(1, 2, 3))
    torch.testing.assert_close(block.bn2.running_mean, expected)
    assert torch.equal(shiftable_layers(model)["layers.0.act1"].bn2.running_mean, before["layers.0.act1"])


def test_cli_refuses_an_unknown_layer_in_one_line(tmp_path, bundled_data_folder):
    from pmsm_compiler.cli.train import main as train_cli

    data = bundled_data_folder(64, 32)
    result = CliRunner().invoke(train_cli, ["--data", str(data), "--model", "resnet_tiny", "--level-shift",
                                            "layers.9.act1", "--out", str(tmp_path / "out"), "--epochs", "1"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: level shift: layers.9.act1 cannot be shifted")
    assert not (tmp_path / "out").exists()


def test_pmsm_export_of_a_shifted_checkpoint_keeps_the_shift(images, tmp_path):
    """A checkpoint's tensors fit a plain block too: the consumers build the model from its config
    (trainer.model_for_config), with the shift, or they would export another function."""
    import onnx

    from pmsm_compiler.cli.export import main as export_cli
    from pmsm_compiler.sessions import make_session

    x, y = images
    cfg = TrainConfig(model="resnet_tiny", act="pqa", levels=4, lam=2.0, batch_size=32, epochs=1, seed=0,
                      threads=1, max_steps=2, level_shift="layers.2.act1")
    out = tmp_path / "run"
    summary = train(cfg, x, y, None, None, str(out), MEAN, STD, progress=False, log=lambda _: None)
    onnx_path = tmp_path / "shifted.onnx"
    result = CliRunner().invoke(export_cli, ["--checkpoint", str(out / "checkpoint.pt"), "-o", str(onnx_path), "-q"])
    assert result.exit_code == 0, result.output
    proto = onnx.load(str(onnx_path))
    assert [n.op_type for n in proto.graph.node].count("Pad") == 1
    batch = Normalizer(MEAN, STD)(torch.from_numpy(x))
    with torch.no_grad():
        ours = summary["model"].eval()(batch).numpy()
    theirs = make_session(str(onnx_path)).run(None, {proto.graph.input[0].name: batch.numpy()})[0]
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3 * np.abs(theirs).max())


def test_probe_suggests_the_layers_that_save_spikes_and_writes_the_shifted_model(tmp_path, capsys,
                                                                                bundled_data_folder):
    """bench/level_shift_probe.py on a checkpoint whose act1 layers mostly sit at the lower cap."""
    from bench_scripts import load_bench_script

    model = trained_like(4)
    ckpt = tmp_path / "checkpoint.pt"
    config = dataclasses.asdict(TrainConfig(model="resnet_tiny", act="pqa", levels=4, lam=2.0))
    torch.save({"model": model.state_dict(), "config": config}, ckpt)
    ds = load_bundled_sample()
    data = bundled_data_folder(200, 32)
    out = tmp_path / "shifted.onnx"
    probe = load_bench_script("level_shift_probe")
    assert probe.main(["--checkpoint", str(ckpt), "--data", str(data), "--images", "200", "--onnx-out", str(out)]) == 0
    printed = capsys.readouterr().out
    x = Normalizer(MEAN, STD)(torch.from_numpy(ds.x[:200]))
    expected = [n for n, e in shift_effect(model, x).items() if e["spikes_change"] < 0]
    assert expected and f"suggested: --level-shift {','.join(expected)}" in printed
    assert out.exists() and "predictions equal to the unshifted model's on" in printed
    assert torch.is_grad_enabled()  # the script leaves no global state behind (it broke later tests once)
