"""bench/train_step.py: its reference (the previous PQA autograd function) computes what the current
one does, so the side-by-side timing compares two implementations of the same gradients; and the
script runs and prints its table."""

from __future__ import annotations

import pytest
import torch

from pmsm_compiler.training.activations import PQA, QCFS

from bench_scripts import load_bench_script


def _script():
    return load_bench_script("train_step")


@pytest.mark.parametrize("make", [lambda: PQA(8, 2.0, -0.25, 1.0), lambda: QCFS(8, 2.0)])
def test_reference_function_gives_the_same_outputs_and_gradients(make):
    bench = _script()
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 4, 6, 6, generator=gen) * 1.5
    x0.view(-1)[:4] = torch.tensor([-0.5, 2.0, 0.0, -0.0])   # both bounds of PQA's range, signed zeros
    g = torch.randn(x0.shape, generator=gen)
    results = []
    for fn in (None, bench.WhereMaskQuantize):
        act = make()
        x = x0.clone().requires_grad_(True)
        with bench.quantize_function(fn or bench.activations._QuantizeFunction):
            y = act(x)
        y.backward(g)
        results.append((y.detach(), x.grad, act.lam.grad))
    (y_new, gx_new, gl_new), (y_old, gx_old, gl_old) = results
    assert torch.equal(y_new, y_old) and torch.equal(gx_new, gx_old)
    assert gx_new.count_nonzero() < gx_new.numel()          # some inputs are outside the range
    torch.testing.assert_close(gl_new, gl_old, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", ["resnet20", "vit_tiny"])
def test_script_prints_its_table(capsys, model):
    threads = torch.get_num_threads()
    try:
        assert _script().main(["--model", model, "--rounds", "1", "--warmup", "0", "--batch-size", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith(f"{model} training step")
    for name in ("relu", "pqa", "pqa (where-mask backward)", "qcfs", "current / where-mask backward"):
        assert name in out


def test_script_refuses_a_bad_count(capsys):
    assert _script().main(["--rounds", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
