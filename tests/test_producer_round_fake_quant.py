"""Fake quantization written with ``torch.round`` (QAT code: LSQ, PACT, DoReFa-style quantizers),
exported by both of torch's exporters, compiles in both modes.

Three ways QAT code rounds, each in a quantizer s·clamp(round(x/s), lo, hi):

- ``torch.round`` itself (an export of an eval-mode model);
- a custom ``autograd.Function`` whose forward is ``torch.round`` (the straight-through
  estimator as a Function): exported as ``Round``;
- the STE as ``(u.round() − u).detach() + u`` (LSQ's ``round_pass``): exported as
  ``Round → Sub(·, u) → Add(·, u)``, which equals Round(u) bit for bit for every finite u
  (``recognize_pqa._straight_through``).

Before this form was recognised, all of them ended in "no quantized activation found". Checked:
``tests/producers.py`` (exact bit-identical at T = 1 with every level equal, folded within policy,
a T = 4 run), and that every quantizer became a ``pmsm::AIFHalfEven`` neuron with the clip's range
(Round rounds half to even), signed and unsigned.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from producers import check_both_modes, export_torch  # noqa: E402


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u):
        return torch.round(u)

    @staticmethod
    def backward(ctx, grad):
        return grad


class RoundFakeQuant(nn.Module):
    """s·clamp(round(x/s), lo, hi) with a learnable s, rounded the ``style`` way."""

    def __init__(self, style: str, step: float, lo: int, hi: int):
        super().__init__()
        self.style, self.lo, self.hi = style, lo, hi
        self.s = nn.Parameter(torch.tensor(step))

    def forward(self, x):
        u = x / self.s
        if self.style == "detach":
            r = (u.round() - u).detach() + u
        elif self.style == "function":
            r = RoundSTE.apply(u)
        else:
            r = torch.round(u)
        return torch.clamp(r, self.lo, self.hi) * self.s


class Net(nn.Module):
    def __init__(self, style: str):
        super().__init__()
        self.conv1, self.q1 = nn.Conv2d(3, 8, 3, padding=1), RoundFakeQuant(style, 0.2, -8, 7)
        self.conv2, self.q2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), RoundFakeQuant(style, 0.15, 0, 15)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.q2(self.conv2(self.q1(self.conv1(x)))), 1))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("style", ["round", "function", "detach"])
def test_round_fake_quantization_from_torch(tmp_path, style, exporter):
    torch.manual_seed(0)
    net = Net(style).eval()
    path = tmp_path / "model.onnx"
    ops = export_torch(net, torch.randn(2, 3, 8, 8), path, exporter)
    assert ops.count("Round") == 2 and (("Sub" in ops) == (style == "detach"))
    data = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32) * 2
    results = check_both_modes(path, data)
    for compiled, _, _ in results.values():
        layers = [(l["op"], l["rounding"], l["s_min"], l["s_max"]) for l in compiled.info["layers"]]
        assert layers == [("AIFHalfEven", "half_even", -8, 7), ("AIFHalfEven", "half_even", 0, 15)]
