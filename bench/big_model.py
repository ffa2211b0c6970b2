"""A model over protobuf's 2 GiB (issue 20, item 1): pmsm-compile and pmsm-run on an ONNX model whose
weights are in an external data file, measured as whole processes.

    python bench/big_model.py [--width 16384] [--layers 2] [--dir DIR] [--mode folded] [--samples 64]
        [--timesteps 2] [--external-data] [--json PATH]

The model is an MLP, x [N, W] → (Gemm W×W → pmsm::PQA) × layers → Gemm(10), random weights
(seed 0) and λ in [2, 10], written tensor by tensor into ``mlp.onnx.data`` (no ModelProto ever
holds the weights: the script itself never needs 2 GiB at once). W = 16384 with 2 layers is
2.15 GB of weights, just over protobuf's 2 GiB.

Measured, each in a fresh process (``compile_scale.run_measured``: wall, CPU time, peak resident
memory from the outside):

- ``pmsm-compile mlp.onnx -o mlp.snn.onnx`` (the verification at T = 1 on ``--samples`` random
  inputs included): its phases, and the bytes the process read (``/proc/self/io`` rchar at exit),
  against the size of the weights: "read once" is rchar ≈ the data file;
- the compiled SNN, written with its own external data file, loaded and run for T steps on 64
  random inputs by the runtime pmsm-run uses (``SNNSession``: pmsm-run's data sets are images),
  and its T = 1 predictions against the ANN's (loaded and run in onnxruntime in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compile_scale import run_measured  # noqa: E402 - a sibling script: its measurement of a process
RCHAR_AT_EXIT = ("import atexit, sys\n"
                 "_rchar_file = sys.argv.pop(1)\n"
                 "def _io():\n"
                 "    with open('/proc/self/io') as f, open(_rchar_file, 'w') as out:\n"
                 "        out.write(next(l.split()[1] for l in f if l.startswith('rchar:')))\n"
                 "atexit.register(_io)\n")

RUN_SNN = """
import json, sys
import numpy as np
from pmsm_compiler.loading import load_model
from pmsm_compiler.runtime import SNNSession
from pmsm_compiler.sessions import make_session
snn_path, ann_path, timesteps, width, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
x = np.random.default_rng(1).standard_normal((64, width), dtype=np.float32)
session = SNNSession(snn_path)
result = session.run_batch(x, timesteps)
session = None
ann = make_session(load_model(ann_path, static_inputs=False))
y = ann.run(None, {'x': x})[0]
with open(out, 'w') as f:
    json.dump({'t1_agreement_with_ann': float((result.predictions_by_t[0] == y.argmax(1)).mean()),
               'spikes_per_sample_step': float(result.spikes.sum() / (64 * timesteps))}, f)
"""


def build(directory: str, width: int, layers: int, seed: int = 0) -> tuple[str, int]:
    """(model path, bytes of weights): the MLP with its weights in ``mlp.onnx.data``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pmsm_compiler.ops import add_functions
    from pmsm_compiler.ops.quantizers import quantizer_functions
    from pmsm_compiler.weights import EXTERNAL_ALIGN

    rng = np.random.default_rng(seed)
    path = os.path.join(directory, "mlp.onnx")
    location = "mlp.onnx.data"
    inits, nodes, offset = [], [], 0
    with open(os.path.join(directory, location), "wb") as f:
        def external(name: str, rows: int, cols: int) -> None:
            nonlocal offset
            f.seek(offset)
            scale = np.float32(1 / np.sqrt(cols))
            for start in range(0, rows, 1024):  # a block of rows at a time: the script never holds a weight whole
                block = rng.standard_normal((min(1024, rows - start), cols), dtype=np.float32)
                block *= scale
                f.write(block.tobytes())
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[rows, cols],
                            data_location=TensorProto.EXTERNAL)
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(rows * cols * 4))):
                t.external_data.add(key=key, value=value)
            inits.append(t)
            offset += -(-rows * cols * 4 // EXTERNAL_ALIGN) * EXTERNAL_ALIGN

        src = "x"
        for i in range(layers):
            external(f"w{i}", width, width)
            inits.append(numpy_helper.from_array(np.float32(rng.uniform(2, 10)), f"lam{i}"))
            nodes += [helper.make_node("Gemm", [src, f"w{i}"], [f"h{i}"], name=f"fc{i}", transB=1),
                      helper.make_node("PQA", [f"h{i}", f"lam{i}"], [f"q{i}"], name=f"act{i}", domain="pmsm", L=8,
                                       alpha=-0.25, beta=1.0)]
            src = f"q{i}"
        external("head", 10, width)
        nodes.append(helper.make_node("Gemm", [src, "head"], ["y"], name="head", transB=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    model = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.save(model, path)
    weight_bytes = (layers * width * width + 10 * width) * 4
    return path, weight_bytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=16384)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dir", help="where the model and the SNN are written (default: a temporary folder, removed)")
    ap.add_argument("--mode", choices=("folded", "exact"), default="folded")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--timesteps", type=int, default=2)
    ap.add_argument("--external-data", action="store_true",
                    help="write the SNN with external data whatever its size (default: pmsm-compile's, at 2 GiB)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pmsm_big_") as tmp:
        directory = os.path.abspath(args.dir or tmp)
        os.makedirs(directory, exist_ok=True)
        start = time.perf_counter()
        path, weight_bytes = build(directory, args.width, args.layers)
        built = time.perf_counter() - start
        data_bytes = os.path.getsize(path + ".data")
        rchar = os.path.join(directory, "rchar.txt")
        report = os.path.join(directory, "report.json")
        out = os.path.join(directory, "mlp.snn.onnx")
        py = sys.executable
        compiled = run_measured([py, "-c", RCHAR_AT_EXIT + "from pmsm_compiler.cli import compile_main; compile_main()",
                         rchar, path, "-o", out, "--mode", args.mode, "--samples", str(args.samples),
                         "--json", report, "-q"] + (["--external-data"] if args.external_data else []),
                                directory, f"pmsm-compile {path}")
        with open(report) as f:
            compile_report = json.load(f)
        with open(rchar) as f:
            read = int(f.read())

        run_json = os.path.join(directory, "run.json")
        ran = run_measured([py, "-c", RUN_SNN, out, path, str(args.timesteps), str(args.width), run_json], directory,
                           f"the SNN run of {out}")
        with open(run_json) as f:
            run_report = json.load(f)

        result = {
            "model": f"MLP {args.layers} x Gemm {args.width}x{args.width} + head, pmsm::PQA",
            "weights_bytes": weight_bytes, "data_file_bytes": data_bytes, "build_s": round(built, 1),
            "compile": {"wall_s": round(compiled["wall_s"], 2), "cpu_s": round(compiled["cpu_s"], 2),
                        "peak_bytes": compiled["peak_bytes"],
                        "phases": compile_report["phase_seconds"], "read_bytes": read,
                        "verification_passed": compile_report["verification"]["passed"],
                        "level_agreement": compile_report["verification"].get("level_agreement"),
                        "output_data": compile_report.get("output_data") is not None,
                        "snn_file_bytes": os.path.getsize(out),
                        "snn_data_bytes": os.path.getsize(out + ".data") if os.path.exists(out + ".data") else 0},
            "run": {"wall_s": round(ran["wall_s"], 2), "cpu_s": round(ran["cpu_s"], 2), "peak_bytes": ran["peak_bytes"],
                    "timesteps": args.timesteps, "samples": 64, **run_report},
            "command": "python bench/big_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
    gib = 2**30
    c = result["compile"]
    print(f"{result['model']}: weights {weight_bytes / 1e9:.2f} GB ({weight_bytes / gib:.2f} GiB), "
          f"data file {data_bytes / 1e9:.2f} GB")
    print(f"pmsm-compile ({args.mode}, {args.samples} samples): {c['wall_s']} s wall, {c['cpu_s']} s CPU, "
          f"peak {c['peak_bytes'] / gib:.2f} GiB ({c['peak_bytes'] / weight_bytes:.1f}x the weights), phases "
          f"{c['phases']}, verification passed: {c['verification_passed']}")
    print(f"  bytes read by the process: {read / 1e9:.3f} GB = {read / data_bytes:.3f}x the data file; "
          f"SNN written as {c['snn_file_bytes']:,} bytes + {c['snn_data_bytes'] / 1e9:.2f} GB of external data")
    r = result["run"]
    print(f"SNNSession run, T = {args.timesteps} (64 random inputs, the runtime as pmsm-run uses it): {r['wall_s']} s "
          f"wall, peak {r['peak_bytes'] / gib:.2f} GiB; T = 1 prediction agreement with the ANN "
          f"{r['t1_agreement_with_ann']}, spikes per sample and step {r['spikes_per_sample_step']}")
    if args.json:
        from pmsm_compiler.files import save_text_atomic

        save_text_atomic(json.dumps(result, indent=1) + "\n", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
