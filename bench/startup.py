"""Process start-up: how long the tools take before (and until) their first step, as whole processes.

    python bench/startup.py [--rounds 5] [--json startup.json]

Compiles the shipped PQA ResNet-20 once, then times fresh processes, round-robin over the commands
(so that a busy machine slows all of them alike), and prints the median wall time of each:

- `pmsm-run --help` and `pmsm-compile --help` (must import neither torch nor onnx);
  after one untimed round (bytecode cached, as in an installed package: ``_environment``); the
  wall time (median, min) and the process's CPU time (median), which a busy machine inflates less;
- `pmsm-run MODEL -T 1 --limit 1 --batch-size 1 -q`: process start to exit for one image at T = 1,
  which bounds "process start to first step" from above (issue 20's target: under 0.5 s);
- `import onnx` and `import ml_dtypes` alone, with the installed ml_dtypes version: onnx imports
  ml_dtypes, whose 0.7.0 release takes 1.5-2.3 s to import on this machine against 0.15 s for 0.6.0
  (its extension module's initialisation), which is why pyproject.toml keeps ml_dtypes below 0.7.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TARGET_FIRST_STEP_S = 0.5


def _tool(name: str) -> list[str]:
    """The console script next to this interpreter (the installed one), else python -m."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(path):
        return [path]
    return [sys.executable, "-c", f"from pmsm_compiler.cli import {name.split('-')[1]}_main as m; m()"]


def _environment() -> dict:
    """This environment, but free to cache bytecode: an installed package has its .pyc files (pip
    compiles them at install time), and with PYTHONDONTWRITEBYTECODE set, as on the machine these
    benches ran on, an editable install compiled its ~40 modules from source in every process
    (0.09 s of CPU)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _time(cmd: list[str], cwd: str, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the process and its threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    from importlib.metadata import version

    from pmsm_compiler.loading import save_model_atomic
    from pmsm_compiler.models import shipped_model_path
    from pmsm_compiler.pipeline import compile_and_verify

    with tempfile.TemporaryDirectory() as tmp:
        snn = os.path.join(tmp, "resnet20.snn.onnx")
        result = compile_and_verify(str(shipped_model_path("resnet20_pqa_cifar10.onnx")), "folded", check=False)
        save_model_atomic(result.model, snn)
        py = sys.executable
        commands = {
            "pmsm-run --help": _tool("pmsm-run") + ["--help"],
            "pmsm-compile --help": _tool("pmsm-compile") + ["--help"],
            "pmsm-run, 1 image, T = 1": _tool("pmsm-run") + [snn, "-T", "1", "--limit", "1", "--batch-size", "1",
                                                              "-q"],
            "python -c 'import onnx'": [py, "-c", "import onnx"],
            "python -c 'import ml_dtypes'": [py, "-c", "import ml_dtypes"],
            "python -c 'pass'": [py, "-c", "pass"],
        }
        env = _environment()
        for cmd in commands.values():  # untimed: bytecode, the kernel library and the file cache in place
            _time(cmd, tmp, env)
        times = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, cmd in commands.items():
                times[name].append(_time(cmd, tmp, env))  # cwd outside any checkout: the installed package
    rows = [{"command": name, "median_s": round(statistics.median(w for w, _ in ts), 3),
             "min_s": round(min(w for w, _ in ts), 3), "cpu_median_s": round(statistics.median(c for _, c in ts), 3),
             "rounds": len(ts)} for name, ts in times.items()]
    first_step = next(r for r in rows if r["command"].startswith("pmsm-run, 1 image"))
    summary = {"rows": rows, "ml_dtypes": version("ml_dtypes"), "onnx": version("onnx"),
               "onnxruntime": version("onnxruntime"), "target_first_step_s": TARGET_FIRST_STEP_S,
               "first_step_within_target": first_step["median_s"] < TARGET_FIRST_STEP_S}
    print(f"{'command':<32} {'median s':>9} {'min s':>7} {'CPU s':>7}")
    for r in rows:
        print(f"{r['command']:<32} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['cpu_median_s']:>7.3f}")
    print(f"(load average {os.getloadavg()[0]:.1f} at the end: on a busy machine the wall time waits for a core, "
          "the CPU time does not)")
    print(f"ml_dtypes {summary['ml_dtypes']}, onnx {summary['onnx']}, onnxruntime {summary['onnxruntime']}; "
          f"pmsm-run on one image, start to exit (an upper bound of start to first step): "
          f"{first_step['median_s']:.3f} s, target < {TARGET_FIRST_STEP_S} s: "
          f"{'met' if summary['first_step_within_target'] else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
