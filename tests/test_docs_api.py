"""docs/api.md: every ```python block runs, in order, as one script (in a temporary folder, on the
bundled model and images), so that the API page cannot drift from the API."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "api.md")


def _blocks():
    if not os.path.exists(PAGE):
        pytest.skip("not run from a source checkout")
    with open(PAGE, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)


def test_api_page_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")  # the training example
    blocks = _blocks()
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_api"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md, python block {i + 1}", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "passed True, level agreement 1.0, top-1 agreement 1.0" in out
    assert (tmp_path / "resnet20.snn.onnx").is_file() and (tmp_path / "tiny_pqa.onnx").is_file()


def test_api_page_covers_the_entry_points():
    """The page shows each public entry point in a block that runs, not only in prose."""
    code = "\n".join(_blocks())
    for name in ("compile_and_verify", "compile_model", "verify(", "SNNSession", "run_batch", "run_dataset",
                 "format_tables", "cost_at", "eq11_power_mw", "TrainConfig", "train(", "export_onnx", "swap_relu"):
        assert name in code, name


def test_readme_links_the_api_page():
    readme = os.path.join(ROOT, "README.md")
    with open(readme, encoding="utf-8") as f:
        assert "(docs/api.md)" in f.read()
