"""bench/ann_form_cost.py: the three rows, timed on a few bundled images."""

from bench_scripts import load_bench_script


def test_prints_each_form_against_the_ann(capsys):
    bench = load_bench_script("ann_form_cost")
    assert bench.main(["--images", "8", "--batch-size", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("resnet20_pqa_cifar10.onnx, exact mode, 8 images in batches of 4")
    rows = {line[:24].strip(): line[24:].split() for line in out[2:]}
    assert set(rows) == {"SNN T = 1, ANN form", "SNN T = 1, usual step", "ANN"}
    assert rows["ANN"][2] == "1.00" and all(float(v) > 0 for r in rows.values() for v in r)


def test_bad_arguments_are_refused(capsys):
    import pytest

    bench = load_bench_script("ann_form_cost")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--rounds", "0"])
    assert exc.value.code == 2 and "--rounds must be >= 1" in capsys.readouterr().err
