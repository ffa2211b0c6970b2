"""Arrows one way: the runtime depends on the ops, the SNN format and the session factory, never on the
compiler side (the passes, the pipeline, the verification). The verification may use the runtime.

Checked twice: statically, every import statement of every file under runtime/ (module level or
inside a function, absolute or relative); and dynamically, a fresh interpreter that imports the
runtime and runs a compiled model through it has loaded none of those modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
FORBIDDEN = ("pmsm_compiler.passes", "pmsm_compiler.compiler", "pmsm_compiler.verify")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file of the package pmsm_compiler.runtime."""
    package = ["pmsm_compiler", "runtime"]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from pmsm_compiler import passes` names the subpackage in the alias
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_the_parser_sees_every_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import pmsm_compiler.passes\nfrom pmsm_compiler import compiler\n"
                      "def f():\n    from ..verify import verify\n    from .session import SNNSession\n")
    names = [name for _, name in _imports(sample)]
    assert [n for n in names if _forbidden(n)] == ["pmsm_compiler.passes", "pmsm_compiler.compiler",
                                                    "pmsm_compiler.verify.verify"]
    assert "pmsm_compiler.runtime.session.SNNSession" in names


def test_runtime_files_import_neither_passes_nor_compiler_nor_verify():
    files = sorted(RUNTIME.rglob("*.py"))
    assert RUNTIME / "session.py" in files and RUNTIME / "step_graphs.py" in files
    bad = [f"{path.name}:{line}: {name}" for path in files for line, name in _imports(path) if _forbidden(name)]
    assert not bad, bad


def _tiny_ann():
    """x [N, 2, 4, 4] → Conv → PQA → MaxPool (a temporal wrapper) → Flatten → MatMul → y."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from pmsm_compiler.ops import add_functions
    from pmsm_compiler.ops.quantizers import quantizer_functions

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in (
        ("w", rng.standard_normal((2, 2, 3, 3)) * 0.4), ("lam", np.array(2.0)), ("head", rng.standard_normal((8, 3))))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("PQA", ["c", "lam"], ["a"], name="act", domain="pmsm", L=4, alpha=-0.25, beta=1.0),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "head"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits),
        opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    return model


def test_running_a_compiled_model_loads_no_compiler_module(tmp_path):
    """A compiled model file run by the runtime in a fresh process, with the fused kernels and without."""
    import onnx

    from pmsm_compiler.compiler import compile_model

    compiled = compile_model(onnx.shape_inference.infer_shapes(_tiny_ann()))
    assert compiled.info.wrappers  # the step graphs bypass it at t = 1
    path = tmp_path / "tiny.snn.onnx"
    onnx.save(compiled.model, path)
    code = (
        "import sys, numpy as np\n"
        "from pmsm_compiler.runtime import SNNSession\n"
        "x = np.random.default_rng(0).standard_normal((3, 2, 4, 4)).astype(np.float32)\n"
        "for kernels in ('auto', 'off'):\n"
        f"    r = SNNSession({str(path)!r}, kernels=kernels).run_batch(x, 3)\n"
        "    assert r.spikes.shape == (3, 3, 1)\n"
        f"loaded = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]\n"
        "assert not loaded, loaded\n")
    # cwd outside the checkout: the installed package, not the source folder
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
