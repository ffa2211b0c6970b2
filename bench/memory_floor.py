"""What pmsm-compile's peak memory cannot go below, set against issue 20's "at most 3x the model's
size" (ViT-S).

    python bench/memory_floor.py M/vit_depth12_dim384_heads6.onnx [M/vgg16.onnx ...] [--json PATH]

M: the models bench/compile_scale.py exported (``--models-dir``). For each model, every row below is
measured in a fresh process of its own, its peak the process's ``VmHWM`` (what pmsm-compile's report
gives as ``peak_memory_bytes``):

- ``pmsm-compile``: the whole compile and its verification (``pmsm-compile MODEL -o SNN --report R``,
  the report's peak); it also writes the SNN that the rows below load;
- ``imports``: the modules pmsm-compile has imported before it reads a model (``pmsm_compiler.cli``
  and ``pmsm_compiler.pipeline``);
- ``+ the ANN's session``: then one onnxruntime session of the ANN, built by onnxruntime from the
  model file (nothing of ours holds a weight), level all, no spinning, one thread, and one run of one
  sample (zeros);
- ``+ the SNN's session``: then one of the SNN as written, the same way (its neuron functions run as
  onnxruntime's function bodies), and one run of its first step.

The verification compares the ANN and the SNN side by side, so the last row is what any verification
run in onnxruntime holds at once, before its own arrays: two sets of weights (folded mode's SNN
weights are other values than the ANN's, so nothing can be shared), each as onnxruntime keeps it
(prepacked for its kernels), with the interpreter and the libraries. The table gives each row in MiB
and as a multiple of the file's size (MiB over MiB, as bench/compile_scale.py reports it), beside
the 3x budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: issue 20: the whole process within this multiple of the model file's size (MiB over MiB)
BUDGET = 3.0

STEPS = ("imports", "ann", "ann+snn")
LABELS = {"imports": "imports", "ann": "+ the ANN's session", "ann+snn": "+ the SNN's session",
          "compile": "pmsm-compile"}


def _peak_bytes() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _session_and_run(path: str):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], types[i.type])
             for i in session.get_inputs()}
    session.run(None, feeds)
    return session


def worker(step: str, ann: str, snn: str) -> dict:
    """One row, in this process: what it holds stays alive until the peak is read."""
    import pmsm_compiler.cli  # noqa: F401
    import pmsm_compiler.pipeline  # noqa: F401

    held = []
    if step in ("ann", "ann+snn"):
        held.append(_session_and_run(ann))
    if step == "ann+snn":
        held.append(_session_and_run(snn))
    return {"step": step, "peak_bytes": _peak_bytes()}


def measure(path: str, tmp: str, python: str) -> dict:
    snn, report = os.path.join(tmp, "snn.onnx"), os.path.join(tmp, "report.json")
    tool = os.path.join(os.path.dirname(python), "pmsm-compile")
    cmd = [tool] if os.path.exists(tool) else [python, "-m", "pmsm_compiler.cli.compile"]
    res = subprocess.run([*cmd, path, "-o", snn, "--report", report], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: pmsm-compile {path} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
    with open(report) as f:
        rows = {"compile": json.load(f)["peak_memory_bytes"]}
    for step in STEPS:
        out = subprocess.run([python, os.path.abspath(__file__), "--worker", step, path, snn], capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(f"error: {step} on {path}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        rows[step] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    return {"model": path, "file_bytes": os.path.getsize(path), "snn_bytes": os.path.getsize(snn), "peaks": rows}


def format_table(results: list[dict]) -> str:
    lines = [f"peak memory, MiB (x the file's size), each row a fresh process; budget {BUDGET:g}x",
             f"{'model':40s} {'file MiB':>8s} {'budget MiB':>10s} " + " ".join(f"{LABELS[s]:>24s}" for s in
                                                                            ("compile", *STEPS))]
    for r in results:
        mb = r["file_bytes"] / 2**20
        cells = [f"{r['peaks'][s] / 2**20:8.0f} ({r['peaks'][s] / 2**20 / mb:4.2f}x)" for s in ("compile", *STEPS)]
        lines.append(f"{os.path.basename(r['model']):40s} {mb:8.1f} {BUDGET * mb:10.0f} " +
                     " ".join(f"{c:>24s}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="ONNX models (bench/compile_scale.py's exports)")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the installed pmsm-compiler")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if not sys.platform.startswith("linux"):
        p.error("Linux only (the peaks are read from /proc)")
    results = []
    for path in args.models:
        if not os.path.isfile(path):
            p.error(f"no such model: {path}")
        with tempfile.TemporaryDirectory() as tmp:
            results.append(measure(path, tmp, args.python))
        print(format_table(results[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"budget": BUDGET, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(worker(*sys.argv[2:])))
        sys.exit(0)
    sys.exit(main())
