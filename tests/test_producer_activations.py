"""CNN activation functions between quantized layers, exported by both of torch's exporters,
compile in both modes: ``nn.PReLU`` (one slope per channel), ``nn.ELU``, ``nn.SELU``, ``nn.CELU``,
``nn.Mish``, ``nn.Softsign``, and the ones written with a comparison (``torch.where(x > 0, x,
0.1 * x)``, ``x * (x >= 0.3).float()``, ``nn.Threshold``), whose comparisons become comparison
regions.

Each becomes a temporal wrapper on spike traffic (``ops.temporal``: PRelu in the positively
homogeneous form, the rest in the general form); the dynamo exporter writes PRelu, Elu, Selu,
Celu and Mish as single ops, the legacy one Mish as Softplus → Tanh → Mul, and both Softsign as
x / (1 + |x|). Before, the loader refused the first five ("unsupported op"). Checked:
``tests/producers.py`` (exact bit-identical at T = 1 with every level equal, folded within
policy, a T = 4 run); the running-mean contract of each wrapper is ``tests/test_temporal_wrappers.py``'s.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from producers import check_both_modes, export_torch  # noqa: E402


class FakeQuant(nn.Module):
    """s·clamp(floor(x/s + ½), lo, hi): PQA written out, as QAT code without this package writes it."""

    def __init__(self, step: float, lo: int, hi: int):
        super().__init__()
        self.lo, self.hi = lo, hi
        self.s = nn.Parameter(torch.tensor(step))

    def forward(self, x):
        return torch.clamp(torch.floor(x / self.s + 0.5), self.lo, self.hi) * self.s


class WhereLeaky(nn.Module):
    """A leaky ReLU as research code writes it: ``torch.where(x > 0, x, 0.1 * x)``."""

    def forward(self, x):
        return torch.where(x > 0, x, 0.1 * x)


class MaskTimes(nn.Module):
    """x · (x ≥ 0.3): a mask of the activation, as a number, times the activation."""

    def forward(self, x):
        return x * (x >= 0.3).float()


ACTIVATIONS = {"PReLU": lambda: nn.PReLU(8, init=0.2), "ELU": lambda: nn.ELU(0.8), "SELU": nn.SELU,
               "CELU": lambda: nn.CELU(1.5), "Mish": nn.Mish, "Softsign": nn.Softsign,
               "where": WhereLeaky, "mask": MaskTimes, "Threshold": lambda: nn.Threshold(0.2, -0.1)}
#: the op the dynamo exporter writes for each (the legacy exporter: the same, but Mish and Softsign);
#: the comparisons become comparison regions (ops.temporal.REGION_DOMAIN)
ONNX_OP = {"PReLU": "PRelu", "ELU": "Elu", "SELU": "Selu", "CELU": "Celu", "Mish": "Mish", "Softsign": "Div",
           "where": "Greater", "mask": "GreaterOrEqual", "Threshold": "LessOrEqual"}


class Net(nn.Module):
    def __init__(self, act: str):
        super().__init__()
        self.conv1, self.q1 = nn.Conv2d(3, 8, 3, padding=1), FakeQuant(0.25, -2, 8)
        self.act = ACTIVATIONS[act]()
        self.conv2, self.q2 = nn.Conv2d(8, 8, 3, padding=1, stride=2), FakeQuant(0.2, -2, 8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.q2(self.conv2(self.act(self.q1(self.conv1(x))))), 1))


# torch's legacy exporter has no nn.Threshold with a non-zero threshold ("Unsupported: ONNX export of
# operator threshold"): dynamo only
@pytest.mark.parametrize("act,exporter", [(a, e) for a in sorted(ACTIVATIONS) for e in ("dynamo", "legacy")
                                          if (a, e) != ("Threshold", "legacy")])
def test_activation_functions_between_quantizers_from_torch(tmp_path, act, exporter):
    torch.manual_seed(0)
    net = Net(act).eval()
    if act == "PReLU":
        with torch.no_grad():
            net.act.weight.copy_(torch.linspace(0.05, 0.4, 8))  # a slope per channel
    path = tmp_path / "model.onnx"
    ops = set(export_torch(net, torch.randn(2, 3, 8, 8), path, exporter))
    assert ONNX_OP[act] in ops or (exporter == "legacy" and act == "Mish" and {"Softplus", "Tanh"} <= ops)
    data = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32) * 2
    results = check_both_modes(path, data)
    for compiled, _, _ in results.values():
        assert len(compiled.info.layers) == 2 and compiled.info.wrappers
        if ONNX_OP[act] in ("Greater", "GreaterOrEqual", "LessOrEqual"):
            assert any(n.domain == "pmsm.region" for n in compiled.model.graph.node)
