"""Compile at scale (issue 20): pmsm-compile as a whole process on ResNet-20, VGG-16, ViT-S and a
ViT depth and width sweep, each compile in its own process.

    python bench/compile_scale.py [--models resnet20,vgg16,vit_s] [--depths 3,6,12,24 --dim 384]
        [--widths 192,384,768 --depth 12] [--mode folded] [--samples 64] [--repeats 1]
        [--models-dir DIR] [--python PYTHON] [--json PATH]

Every model is a zoo model with PQA activations and random λ in [2, 10] (seed 0), exported to ONNX
by ``pmsm_compiler.training.export.export_onnx`` in a process of its own (``--models-dir`` keeps the
exports between runs). Each compile is ``pmsm-compile MODEL -o OUT --json REPORT`` (the verification
at T = 1 on ``--samples`` random inputs included) in a fresh process: its wall time, its CPU time and
its peak resident memory (``os.wait4``'s ru_maxrss: that process's own peak) are measured from the
outside, its phases (load, compile, verify, save) read from its report; "startup" is the rest of the
wall time (interpreter, imports, exit).

The table gives the file size, the ANN's nodes, the times, the peak memory and peak / file size
against the targets (ViT-S: <= 5 s and <= 3x its size; VGG-16: <= 2 s). The linearity check fits
time and peak memory over the depth sweep (a fixed cost plus a cost per node / per MB of weights) and
gives each point's cost per node and per MB beyond the fit's fixed cost, and the worst relative
residual.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: name -> (seconds, peak / file size) the issue asks for; None: no target
TARGETS = {"vit_s": (5.0, 3.0), "vgg16": (2.0, None)}


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def configurations(args) -> list[dict]:
    """[{"key", "label", "kind", "kwargs"}]: the named zoo models, then the depth and width sweeps
    (a ViT of the same dim and depth as another is exported and compiled once, e.g. ViT-S = depth 12
    at dim 384)."""
    out, seen = [], {}

    def add(label, kind, kwargs, sweep=None):
        key = kind + "".join(f"_{k}{v}" for k, v in sorted(kwargs.items()))
        if key in seen:
            seen[key]["sweeps"].append(sweep)
            return
        seen[key] = {"key": key, "label": label, "kind": kind, "kwargs": kwargs, "sweeps": [sweep]}
        out.append(seen[key])

    vit = {"dim": 384, "depth": 12, "heads": 6}
    for name in [m for m in args.models.split(",") if m]:
        if name == "vit_s":
            add("vit_s", "vit", dict(vit))
        else:
            add(name, name, {})
    for d in args.depths:
        add(f"vit d{d} w{args.dim}", "vit", {"dim": args.dim, "depth": d, "heads": args.heads}, "depth")
    for w in args.widths:
        add(f"vit d{args.depth} w{w}", "vit", {"dim": w, "depth": args.depth, "heads": args.heads}, "width")
    for c in out:
        c["sweeps"] = [s for s in c["sweeps"] if s]
    return out


def export(kind: str, kwargs: dict, path: str) -> dict:
    """Build and export one model (run in its own process by ``--export``); returns its facts."""
    import onnx
    import torch

    from pmsm_compiler.training.activations import quantized_activations
    from pmsm_compiler.training.export import export_onnx
    from pmsm_compiler.training.zoo import build_model
    from pmsm_compiler.training.zoo.vit import VisionTransformer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    if kind == "vit":
        net = VisionTransformer(dim=kwargs["dim"], depth=kwargs["depth"], num_heads=kwargs["heads"], act="pqa")
    else:
        net = build_model(kind, act="pqa")
    for _, q in quantized_activations(net):
        q.lam.data.uniform_(2, 10)
    export_onnx(net.eval(), path)
    model = onnx.load(path)
    return {"nodes": len(model.graph.node), "weight_bytes": sum(len(t.raw_data) for t in model.graph.initializer),
            "file_bytes": os.path.getsize(path)}


def _exported(config: dict, models_dir: str) -> tuple[str, dict]:
    path = os.path.join(models_dir, config["key"] + ".onnx")
    facts_path = path + ".json"
    if not (os.path.exists(path) and os.path.exists(facts_path)):
        done = subprocess.run([sys.executable, __file__, "--export", config["kind"], json.dumps(config["kwargs"]),
                               path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"export of {config['label']} failed: {done.stderr.strip()[-500:]}")
    with open(facts_path) as f:
        return path, json.load(f)


def run_measured(cmd: list[str], cwd: str, what: str) -> dict:
    """Run ``cmd`` in a fresh process in folder ``cwd`` and measure it from the outside: {"wall_s",
    "cpu_s", "peak_bytes" (that process's peak RSS: ``os.wait4``'s ru_maxrss, which on Linux is
    at least this process's own high-water mark at the fork, carried over the exec; the scripts
    that call this stay far below what they measure), "stdout"}.
    RuntimeError naming ``what`` and the end of its stderr if it exits non-zero. Its output goes
    to temporary files: a pipe nobody reads until the exit could fill and stop it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {stderr.strip()[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_bytes": usage.ru_maxrss * 1024,
            "stdout": stdout}


def compile_once(path: str, out_dir: str, mode: str, samples: int, python: str | None = None) -> dict:
    """One ``pmsm-compile`` in a fresh process of ``python`` (default: this interpreter): wall, CPU
    and peak memory from the outside, its report's phases (an older pmsm-compile without
    ``phase_seconds``: "total", its load + compile + verify)."""
    report_path = os.path.join(out_dir, "report.json")
    out = os.path.join(out_dir, "model.snn.onnx")
    for p in (report_path, out):
        if os.path.exists(p):
            os.remove(p)
    cmd = [python or sys.executable, "-c", "from pmsm_compiler.cli import compile_main; compile_main()",
           os.path.abspath(path), "-o", out, "--mode", mode, "--samples", str(samples), "--json", report_path, "-q"]
    # cwd: in a checkout's own folder, ``python -c`` would import that checkout's pmsm_compiler/
    run = run_measured(cmd, out_dir, f"pmsm-compile {path}")
    with open(report_path) as f:
        report = json.load(f)
    phases = report.get("phase_seconds") or {"total": report["total_seconds"]}
    wall = run["wall_s"]
    return {"wall_s": wall, "cpu_s": run["cpu_s"], "peak_bytes": run["peak_bytes"],
            "phases": {**phases, "startup": max(0.0, wall - sum(phases.values()))},
            "verification_passed": report["verification"]["passed"], "batch": report["verification"].get("batch")}


def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b·x: {"fixed": a, "per_unit": b, "worst_residual": max |y − fit| / y}."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys)) if n else 0.0
    return {"fixed": a, "per_unit": b, "worst_residual": worst}


def linearity(rows: list[dict]) -> dict | None:
    """The depth sweep's time against nodes and peak memory against MB of weights."""
    sweep = sorted((r for r in rows if "depth" in r["sweeps"]), key=lambda r: r["nodes"])
    if len(sweep) < 2:
        return None
    nodes = [r["nodes"] for r in sweep]
    mb = [r["weight_bytes"] / 2**20 for r in sweep]
    time_fit = linear_fit(nodes, [r["wall_s"] for r in sweep])
    cpu_fit = linear_fit(nodes, [r["cpu_s"] for r in sweep])
    memory_fit = linear_fit(mb, [r["peak_bytes"] / 2**20 for r in sweep])
    points = [{"label": r["label"], "nodes": r["nodes"], "weight_mb": m,
               "ms_per_node": 1000 * (r["wall_s"] - time_fit["fixed"]) / r["nodes"],
               "cpu_ms_per_node": 1000 * (r["cpu_s"] - cpu_fit["fixed"]) / r["nodes"],
               "mib_per_weight_mb": (r["peak_bytes"] / 2**20 - memory_fit["fixed"]) / m}
              for r, m in zip(sweep, mb)]
    return {"time_vs_nodes": time_fit, "cpu_vs_nodes": cpu_fit, "peak_mib_vs_weight_mb": memory_fit,
            "points": points}


def _target(row) -> str:
    seconds, ratio = TARGETS.get(row["label"], (None, None))
    parts = []
    if seconds is not None:
        parts.append(f"<= {seconds:g} s: {'met' if row['wall_s'] <= seconds else 'not met'}")
    if ratio is not None:
        parts.append(f"<= {ratio:g}x: {'met' if row['peak_over_file'] <= ratio else 'not met'}")
    return "; ".join(parts)


def table(rows: list[dict]) -> str:
    head = (f"{'model':<16} {'file MB':>8} {'nodes':>6} {'wall s':>7} {'cpu s':>6} {'startup':>7} {'load':>5} "
            f"{'compile':>7} {'verify':>6} {'save':>5} {'peak MiB':>8} {'peak/file':>9}  target")
    lines = [head]
    for r in rows:
        p = r["phases"]
        steps = " ".join(f"{p[k]:>{w}.2f}" if k in p else f"{'-':>{w}}"
                         for k, w in (("startup", 7), ("load", 5), ("compile", 7), ("verify", 6), ("save", 5)))
        lines.append(f"{r['label']:<16} {r['file_bytes'] / 2**20:>8.1f} {r['nodes']:>6} {r['wall_s']:>7.2f} "
                     f"{r['cpu_s']:>6.2f} {steps} {r['peak_bytes'] / 2**20:>8.0f} {r['peak_over_file']:>9.1f}  "
                     f"{_target(r)}")
    return "\n".join(lines)


def linearity_text(lin: dict | None) -> str:
    if lin is None:
        return "linearity: fewer than two depths"
    t, c, m = lin["time_vs_nodes"], lin["cpu_vs_nodes"], lin["peak_mib_vs_weight_mb"]
    lines = ["linearity over the depths (least squares; residual: worst |point - fit| / point):",
             f"  wall = {t['fixed']:.2f} s + {1000 * t['per_unit']:.2f} ms/node (residual "
             f"{100 * t['worst_residual']:.1f} %); cpu = {c['fixed']:.2f} s + {1000 * c['per_unit']:.2f} ms/node "
             f"(residual {100 * c['worst_residual']:.1f} %)",
             f"  peak = {m['fixed']:.0f} MiB + {m['per_unit']:.2f} MiB per MB of weights (residual "
             f"{100 * m['worst_residual']:.1f} %)"]
    for p in lin["points"]:
        lines.append(f"  {p['label']:<16} {p['nodes']:>6} nodes {p['weight_mb']:>7.1f} MB: beyond the fixed costs "
                     f"{p['ms_per_node']:.1f} ms/node wall, {p['cpu_ms_per_node']:.1f} ms/node cpu, "
                     f"{p['mib_per_weight_mb']:.2f} MiB per MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg16,vit_s", help="zoo models (vit_s: ViT-S), comma list")
    ap.add_argument("--depths", type=_ints, default=[3, 6, 12, 24], help="ViT depths of the depth sweep")
    ap.add_argument("--dim", type=int, default=384, help="ViT width of the depth sweep")
    ap.add_argument("--widths", type=_ints, default=[192, 384, 768], help="ViT widths of the width sweep")
    ap.add_argument("--depth", type=int, default=12, help="ViT depth of the width sweep")
    ap.add_argument("--heads", type=int, default=6, help="ViT attention heads of the sweeps")
    ap.add_argument("--mode", default="folded", choices=["folded", "exact"])
    ap.add_argument("--samples", type=int, default=64, help="verification samples (pmsm-compile's default)")
    ap.add_argument("--repeats", type=int, default=1, help="compiles per model; the one of median wall time is kept")
    ap.add_argument("--models-dir", help="where the exported models are kept (default: a temporary folder)")
    ap.add_argument("--python", help="the Python that runs pmsm-compile (default: this one), e.g. the environment of "
                                     "another checkout, for a before/after comparison")
    ap.add_argument("--json")
    ap.add_argument("--export", nargs=3, metavar=("KIND", "KWARGS", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.export:
        kind, kwargs, path = args.export
        facts = export(kind, json.loads(kwargs), path)
        with open(path + ".json", "w") as f:
            json.dump(facts, f)
        return 0
    if args.repeats < 1 or args.samples < 1:
        ap.error("--repeats and --samples must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = os.path.abspath(args.models_dir or os.path.join(tmp, "models"))
        os.makedirs(models_dir, exist_ok=True)
        rows = []
        for config in configurations(args):
            path, facts = _exported(config, models_dir)
            runs = sorted((compile_once(path, tmp, args.mode, args.samples, args.python) for _ in range(args.repeats)),
                          key=lambda r: r["wall_s"])
            run = runs[len(runs) // 2]
            row = {"label": config["label"], "sweeps": config["sweeps"], **config["kwargs"], **facts, **run,
                   "peak_over_file": run["peak_bytes"] / facts["file_bytes"],
                   "wall_s_all": [r["wall_s"] for r in runs]}
            rows.append(row)
            print(f"{row['label']}: {row['wall_s']:.2f} s, peak {row['peak_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    lin = linearity(rows)
    print(f"pmsm-compile ({args.mode}, {args.samples} verification samples) of {args.python or sys.executable}, "
          f"one process per compile, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(table(rows))
    print(linearity_text(lin))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "samples": args.samples, "python": args.python or sys.executable,
                       "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows,
                       "linearity": lin, "targets": TARGETS}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
