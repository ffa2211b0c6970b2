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


def test_compiler_and_runtime_do_not_import_torch(tmp_path):
    # cwd outside the checkout: the installed package is imported, not the source folder
    code = textwrap.dedent("""
        import sys
        import pmsm_compiler.compiler, pmsm_compiler.runtime, pmsm_compiler.verify, pmsm_compiler.loading
        import pmsm_compiler.cli.compile, pmsm_compiler.cli.run, pmsm_compiler.cli.demo, pmsm_compiler.cli.entropy
        import pmsm_compiler.models, pmsm_compiler.data
        from pmsm_compiler.models import shipped_model_path
        assert "torch" not in sys.modules, "torch was imported"
        training = sorted(m for m in sys.modules if m.startswith("pmsm_compiler.training"))
        assert not training, f"the training side was imported: {training}"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_training_side_is_one_subpackage():
    """Every module that imports torch lives under pmsm_compiler/training/ (the zoo included); the
    rest of the package, passes/ and runtime/ name neither torch nor the training side."""
    import ast

    outside = []
    for folder in ("pmsm_compiler", "passes", "runtime", "models"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel_dir = os.path.relpath(dirpath, ROOT)
            if rel_dir.split(os.sep)[:2] == ["pmsm_compiler", "training"]:
                continue
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        mods = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    else:
                        continue
                    for mod in mods:
                        if mod == "torch" or mod.startswith("torch.") or mod.startswith("pmsm_compiler.training"):
                            outside.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} imports {mod}")
    if not os.path.isdir(os.path.join(ROOT, "pmsm_compiler", "training")):
        pytest.skip("not run from a source checkout")
    # the CLIs that train and export import the training side, lazily, inside their commands
    # ... and the deprecated old names re-export it
    allowed = ("pmsm_compiler/cli/train.py", "pmsm_compiler/cli/export.py", "models/__init__.py",
               "pmsm_compiler/activations.py", "pmsm_compiler/export.py")
    assert [o for o in outside if not o.startswith(allowed)] == []


@pytest.mark.parametrize("old,new,name", [
    ("pmsm_compiler.activations", "pmsm_compiler.training.activations", "PQA"),
    ("pmsm_compiler.export", "pmsm_compiler.training.export", "export_onnx"),
    ("pmsm_compiler.models", "pmsm_compiler.training.zoo", "build_model"),
])
def test_old_training_paths_still_import_with_a_deprecation_warning(tmp_path, old, new, name):
    """The paths the README used to name keep working for users' code: the same objects, and one
    DeprecationWarning that names the new place."""
    pytest.importorskip("torch")
    code = textwrap.dedent(f"""
        import importlib, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from {old} import {name} as got
        import {new} as moved
        assert got is getattr(moved, "{name}"), "not the same object"
        messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
        assert len(messages) == 1 and "{new}" in messages[0], messages
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
