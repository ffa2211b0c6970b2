"""spike_cost: the exact spike counts in the forward pass, the documented surrogate gradients in the
backward pass, the penalty in pmsm-train (recorded in the log, refused without quantized
activations, held to the resume check), and that it lowers the spike cost it prices."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.training.activations import PQA, quantized_activations  # noqa: E402
from pmsm_compiler.training.spike_cost import SpikeCost, collect_spike_cost, set_spike_cost  # noqa: E402


def _levels(x, lam, levels=8, k_min=-2, k_max=8):
    return torch.clamp(torch.floor(x / (lam / levels) + 0.5), k_min, k_max)


@pytest.mark.parametrize("rule", ["spikes", "events"])
def test_forward_counts_exactly_and_backward_is_the_documented_surrogate(rule):
    torch.manual_seed(0)
    x = (torch.randn(4000, dtype=torch.float64) * 3).requires_grad_()
    lam = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    cost = SpikeCost.apply(x, lam, 8, -2, 8, rule)
    k = _levels(x.detach(), 4.0)
    assert float(cost.detach()) == float(k.abs().sum() if rule == "spikes" else (k != 0).sum())
    cost.backward()
    u = x.detach() / 0.5
    du = torch.sign(u) if rule == "spikes" else torch.sign(u) * torch.clamp(1 - (u.abs() - 0.5).abs(), min=0)
    assert torch.allclose(x.grad, du / 0.5)
    inside = (u >= -2) & (u <= 8)
    assert torch.allclose(lam.grad, -(du * u * inside).sum() / 4.0)
    if rule == "spikes":  # saturated neurons are pushed back too (the unmasked gradient)
        assert torch.all(x.grad[u < -3] < 0)


def test_activations_record_the_cost_only_when_asked_and_with_gradients():
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), PQA(lam=2.0), torch.nn.Linear(5, 5), PQA(lam=3.0))
    x = torch.randn(7, 6)
    net(x)
    assert collect_spike_cost(net) == (None, 0)
    assert set_spike_cost(net, "spikes") == 2
    net(x)
    total, neurons = collect_spike_cost(net)
    assert neurons == 10
    expected = sum(float(q.levels_of(q(h)).abs().sum().detach()) for h, (_, q) in
                   zip([net[0](x), net[2](net[1](net[0](x)))], quantized_activations(net)))
    assert float(total.detach()) == expected
    with torch.no_grad():  # evaluation records nothing new
        set_spike_cost(net, "events")
        net(x)
        assert collect_spike_cost(net) == (None, 0)
    with pytest.raises(ValueError):
        set_spike_cost(net, "joules")


def test_training_with_a_penalty_lowers_the_spike_cost(tmp_path):
    from pmsm_compiler.training.trainer import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 256)
    costs = {}
    for penalty in (0.0, 5.0):
        cfg = TrainConfig(model="resnet_tiny", act="pqa", lam=2.0, epochs=3, batch_size=64, lr=0.01, seed=1,
                          threads=1, spike_penalty=penalty, warmup_epochs=0)
        summary = train(cfg, x, y, None, None, str(tmp_path / f"p{penalty}"), (0.5,) * 3, (0.25,) * 3,
                        progress=False, log=lambda line: None)
        net = summary["model"].eval()
        set_spike_cost(net, "spikes")
        with torch.enable_grad():
            net(torch.from_numpy((x[:64].transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.25).float())
        cost, neurons = collect_spike_cost(net)
        costs[penalty] = float(cost.detach()) / (64 * neurons)
        if penalty:
            assert "train_spikes_per_neuron" in summary["history"][-1]
    assert costs[5.0] < 0.9 * costs[0.0], costs  # the same seed: a penalty that did nothing gives equal costs


def test_cli_validates_the_penalty(tmp_path):
    from click.testing import CliRunner

    from pmsm_compiler.cli.train import main

    data = tmp_path / "d"
    data.mkdir()
    np.savez(data / "train.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    np.savez(data / "test.npz", x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    for args, message in ((["--spike-penalty", "-1"], "finite number >= 0"),
                          (["--spike-penalty", "1", "--act", "relu"], "needs quantized activations")):
        r = CliRunner().invoke(main, ["--data", str(data), "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 2 and message in r.output
