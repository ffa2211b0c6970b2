"""Packaging guards: every package folder is installed under one namespace, and the compiler and
runtime import (and compile/run) without torch."""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"pmsm_compiler": "pmsm_compiler", "passes": "pmsm_compiler.passes", "runtime": "pmsm_compiler.runtime",
           "models": "pmsm_compiler.models"}


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("not run from a source checkout")
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_every_package_folder_is_installed():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    for folder, namespace in FOLDERS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
                name = namespace if rel == "." else namespace + "." + rel.replace(os.sep, ".")
                assert name in listed, f"{dirpath} is a package but {name} is not in pyproject's packages"
    # no generic top-level names: everything under pmsm_compiler
    assert all(p == "pmsm_compiler" or p.startswith("pmsm_compiler.") for p in listed)


def test_compiler_and_runtime_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import pmsm_compiler.compiler, pmsm_compiler.runtime, pmsm_compiler.verify, pmsm_compiler.loading
        import pmsm_compiler.cli.compile, pmsm_compiler.cli.run, pmsm_compiler.cli.demo, pmsm_compiler.cli.entropy
        import pmsm_compiler.models, pmsm_compiler.data
        assert "torch" not in sys.modules, "torch was imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(ROOT))
