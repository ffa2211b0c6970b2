"""bench/onednn_channels_last.py: a child that survives reports "ok", the gradient gap of a layer is
measured against NCHW without oneDNN, and bad arguments are a one-line error."""

from __future__ import annotations

import torch

from bench_scripts import load_bench_script


def test_a_safe_shape_runs_in_a_child_and_reports_ok():
    # 1 input channel is outside the crashing range on every machine measured
    assert load_bench_script("onednn_channels_last").run_child((1, 2, 1, 2), 1, timeout=120) == "ok"


def test_gradient_gap_of_a_resnet20_shortcut_is_float_rounding():
    mkldnn, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gaps = load_bench_script("onednn_channels_last").gradient_gap((16, 32, 1, 2))
    finally:
        torch.set_num_threads(threads)
    assert len(gaps) == 3 and all(0 <= g < 1e-4 for g in gaps), gaps
    assert torch.backends.mkldnn.enabled == mkldnn


def test_bad_threads_argument(capsys):
    assert load_bench_script("onednn_channels_last").main(["--threads", "one"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --threads")
