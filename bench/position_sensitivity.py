"""Which onnxruntime CPU kernels round a sample by where it sits in the tensor (issue 20's layer-by-layer runs).

    python bench/position_sensitivity.py [--ops Log,Exp,...] [--threads 1,2] [--json PATH]

A time-batched pass (runtime/time_batched.py) runs the step graph once on T·N rows and puts sample
n of step t at row t·N + n. That equals T step-by-step runs only where each op computes a row as it
does in a batch of N. For each op (one node, float32, per-sample shapes from 1 to 16,384 elements;
a reduction over the per-sample axes after the first; values of both signs but for ``POSITIVE_OPS``),
this runs T·N random rows at once and each step's N rows alone, at each thread count, and counts the
(shape, threads, N, T) cases whose rows differ in any bit: "aligned" where N times the per-sample
bytes is a multiple of ``ALIGNMENT_BYTES`` (where the runtime lets ``ALIGNMENT_SENSITIVE_OPS``
pass), "misaligned" otherwise. An op with failures in the aligned column must be in
``POSITION_SENSITIVE_OPS`` (refused outright); one with failures only in the misaligned column in
``ALIGNMENT_SENSITIVE_OPS``. The last column says whether the runtime's tables agree. Exit 1 where
they do not.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.runtime.time_batched import (ALIGNMENT_BYTES, ALIGNMENT_SENSITIVE_OPS, ELEMENTWISE_OPS,
                                                POSITION_SENSITIVE_OPS)

#: ops of one float input (and constant operands) that a pass admits, and sums over trailing axes
DEFAULT_OPS = ["Log", "Softplus", "Exp", "Erf", "Tanh", "Sigmoid", "Gelu", "Pow", "Div", "Sqrt", "Reciprocal",
               "HardSigmoid", "HardSwish", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Mish", "Softsign",
               "ThresholdedRelu", "Clip", "Floor", "Round", "Abs", "Neg", "Relu", "Softmax", "LogSoftmax",
               "ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "GlobalAveragePool"]
#: ops drawn on positive rows (their domain, or a division by the row); the others on both signs, so
#: that a branch for negative inputs (Elu's exp, LeakyRelu's slope) runs too
POSITIVE_OPS = {"Log", "Sqrt", "Pow", "Div", "Reciprocal"}
SHAPES = [[1], [3], [5], [6], [7], [13], [16], [24], [100], [1000], [1024], [4096], [4, 3, 2], [2, 7, 3], [3, 40, 40],
          [16, 32, 32], [64, 8, 8]]
SAMPLES = (1, 2, 3, 4, 8, 16)
STEPS = (2, 3, 5, 8, 16)


def one_node_model(op: str, shape: list[int]) -> bytes:
    inits, inputs, attrs = [], ["x"], {}
    if op == "Pow":
        inits.append(numpy_helper.from_array(np.array(1.37, np.float32), "p"))
        inputs.append("p")
    elif op == "Div":  # a constant over the rows: the order that has a reciprocal path
        inits.append(numpy_helper.from_array(np.array(3.1, np.float32), "p"))
        inputs = ["p", "x"]
    elif op == "Clip":
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0.2, "lo"), (3.0, "hi"))]
        inputs += ["lo", "hi"]
    elif op.startswith("Reduce"):  # the trailing axes after the first per-sample axis (or that axis)
        axes = np.arange(2, len(shape) + 1) if len(shape) > 1 else np.array([1])
        inits.append(numpy_helper.from_array(axes.astype(np.int64), "axes"))
        inputs.append("axes")
    elif op in ("Softmax", "LogSoftmax"):
        attrs["axis"] = -1
    elif op == "PRelu":  # one slope per position of the first per-sample axis, as a per-channel PReLU
        slope = np.linspace(0.05, 0.5, shape[0], dtype=np.float32).reshape([shape[0]] + [1] * (len(shape) - 1))
        inits.append(numpy_helper.from_array(slope, "slope"))
        inputs.append("slope")
    node = helper.make_node(op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def probe(op: str, threads: list[int], rng: np.random.Generator) -> dict:
    found = {"aligned": [], "misaligned": []}
    for shape in SHAPES:
        shape = [1] + shape if op == "GlobalAveragePool" and len(shape) < 2 else shape
        per_sample = int(np.prod(shape))
        model = one_node_model(op, shape)
        for n_threads in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n_threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            for n in SAMPLES:
                for steps in STEPS:
                    rows = rng.uniform(0.05, 5.0, size=[steps * n] + shape).astype(np.float32)
                    if op not in POSITIVE_OPS:
                        rows *= rng.choice(np.float32([-1, 1]), size=rows.shape)
                    passed = session.run(None, {"x": rows})[0]
                    for t in range(steps):
                        alone = session.run(None, {"x": rows[t * n:(t + 1) * n]})[0]
                        if not np.array_equal(passed[t * n:(t + 1) * n], alone, equal_nan=True):
                            column = "misaligned" if n * per_sample * 4 % ALIGNMENT_BYTES else "aligned"
                            found[column].append({"shape": shape, "threads": n_threads, "samples": n, "steps": steps})
                            break
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=",".join(DEFAULT_OPS))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    threads = [int(t) for t in args.threads.split(",")]
    print(f"onnxruntime {ort.__version__}; threads {threads}; {len(SHAPES)} shapes x {len(SAMPLES)} batches x "
          f"{len(STEPS)} step counts per thread count")
    print(f"{'op':<18} {'aligned':>8} {'misaligned':>11}  runtime's table")
    results, disagreements = {}, 0
    for op in args.ops.split(","):
        found = probe(op, threads, rng)
        results[op] = found
        if op in POSITION_SENSITIVE_OPS:
            table, agrees = "position-sensitive (refused)", True  # refusing more than needed is safe
        elif op in ALIGNMENT_SENSITIVE_OPS:
            table, agrees = "alignment-sensitive", not found["aligned"]
        elif op in ELEMENTWISE_OPS or op.startswith("Reduce") or op in ("GlobalAveragePool", "Softmax", "LogSoftmax"):
            table, agrees = "independent", not found["aligned"] and not found["misaligned"]
        else:
            table, agrees = "not admitted in a pass", True
        disagreements += not agrees
        print(f"{op:<18} {len(found['aligned']):>8} {len(found['misaligned']):>11}  {table}"
              f"{'' if agrees else '  <-- DISAGREES'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"onnxruntime": ort.__version__, "threads": threads, "results": results}, f, indent=1)
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
