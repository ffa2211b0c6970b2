"""Differential fuzzing of pmsm-compile: N random quantized networks, both modes, every
onnxruntime optimization level, T = 1 parity with the ANN and T ≤ 8 consistency of the runtime
with the step-by-step reference (``pmsm_compiler.testing.fuzz``).

    python bench/fuzz_compiler.py --graphs 2000 --seed 0 [--jobs 2] [--json fuzz.json] [--out-dir DIR]
    python bench/fuzz_compiler.py --seeds 11,42 --verbose          # replay given graphs
    python bench/fuzz_compiler.py --seeds 70932 --generator-version 1   # as it was found

Prints and writes (``--json``) a summary: graphs, compiled / refused (by reason) per mode, failed
graphs by category, the smallest failing graph per category, op coverage, the command line.
``--out-dir`` receives, per failure category, the smallest failing network as ``model.onnx``
with ``README.txt`` (its description, the failure and the commands that reproduce it).
Exit code 0 when no graph failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pmsm_compiler.testing.fuzz import GENERATOR_VERSION  # noqa: E402


def _work(job):
    seed, kwargs = job
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    from pmsm_compiler.testing.fuzz import run_graph

    return run_graph(seed, **kwargs)


def _replay_command(seed, mode, level, version=None):
    cmd = f"python bench/fuzz_compiler.py --seeds {seed} --verbose"
    if version is not None and version != GENERATOR_VERSION:
        cmd += f" --generator-version {version}"
    if mode:
        cmd += f" --modes {mode}"
    if level:
        cmd += f" --opt-levels {level}"
    return cmd


def save_examples(summary: dict, out_dir: str) -> list[str]:
    """The smallest failing network of each category as <out_dir>/<category>/model.onnx + README.txt."""
    import onnx

    from pmsm_compiler.testing.fuzz import random_network

    written = []
    for category, ex in summary["smallest"].items():
        folder = os.path.join(out_dir, category)
        os.makedirs(folder, exist_ok=True)
        lines = [f"category: {category}", f"failure: {ex['message']}", f"network: {ex['description']}",
                 f"nodes: {ex['nodes']}; check: {ex['check']}, mode: {ex['mode']}, opt level: {ex['opt_level']}",
                 f"replay: {_replay_command(ex['seed'], ex['mode'], ex['opt_level'], ex.get('version'))}"]
        if category != "generator":
            model, _ = random_network(ex["seed"], version=ex.get("version", GENERATOR_VERSION))
            path = os.path.join(folder, "model.onnx")
            onnx.save(model, path)
            exact = " --exact" if ex["mode"] == "exact" else ""
            lines.append(f"compile: pmsm-compile {path}{exact} --samples 16"
                         + (f" --opt-level {ex['opt_level']}" if ex["opt_level"] else ""))
        with open(os.path.join(folder, "README.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        written.append(folder)
    return written


def print_summary(summary: dict, out=sys.stdout):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"graphs: {summary['graphs']} in {summary['wall_seconds']:.0f} s "
      f"({summary['seconds']:.0f} s of checks); graphs with a failure: {summary['graphs_with_failures']}")
    for mode in summary["modes"]:
        refused = summary["refused"].get(mode, {})
        p(f"  {mode}: compiled {summary['compiled'].get(mode, 0)}, refused {sum(refused.values())}")
        for reason, count in list(refused.items())[:12]:
            p(f"      {count:5d}  {reason}")
        if len(refused) > 12:
            p(f"      ... and {len(refused) - 12} more reasons")
    if "load" in summary["refused"]:
        p(f"  refused by the loader: {sum(summary['refused']['load'].values())}")
    for reason, count in summary.get("skipped", {}).items():
        p(f"  skipped (mode x level): {count:5d}  {reason}")
    if summary["failed_graphs"]:
        p("failures (graphs per category; smallest example):")
        for cat, count in summary["failed_graphs"].items():
            ex = summary["smallest"][cat]
            p(f"  {cat:<24} {count:5d}  seed {ex['seed']} ({ex['nodes']} nodes, {ex['mode']}, {ex['opt_level']}): "
              f"{ex['message'][:140]}")
    else:
        p("failures: none")
    p(f"command: {summary['command']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="first seed; graphs use seed .. seed + graphs - 1")
    ap.add_argument("--seeds", help="comma-separated seeds to run instead (replay)")
    ap.add_argument("--generator-version", type=int, default=GENERATOR_VERSION, choices=[1, 2, 3],
                    help="the generator's version (a recorded failure replays under its own; "
                         "fuzz.GENERATOR_VERSION)")
    ap.add_argument("--modes", default="exact,folded")
    ap.add_argument("--opt-levels", default="disable,basic,extended,all")
    ap.add_argument("--max-timesteps", type=int, default=8, help="T of the consistency check: 2..this, by seed")
    ap.add_argument("--cli-every", type=int, default=10, help="also run the pmsm-compile CLI on every k-th graph "
                    "(0: never)")
    ap.add_argument("--runtime-levels", choices=["all", "rotate"], default="rotate",
                    help="opt levels of the runtime-vs-reference check: every level, or 'all' plus one rotating "
                         "over the others per graph (parity and semantics run at every level either way)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--out-dir", help="write the smallest failing network of each category here")
    ap.add_argument("--records", help="append each graph's record here as it finishes (JSON lines)")
    ap.add_argument("--from-records", help="summarize the records of an earlier (or interrupted) run instead of "
                    "running graphs")
    ap.add_argument("--verbose", action="store_true", help="print every failing check")
    args = ap.parse_args(argv)

    from pmsm_compiler.sessions import OPT_LEVELS

    modes = [m for m in args.modes.split(",") if m]
    levels = [lv for lv in args.opt_levels.split(",") if lv]
    bad = [lv for lv in levels if lv not in OPT_LEVELS]
    if bad or not set(modes) <= {"exact", "folded"}:
        ap.error(f"unknown mode or level: {modes} {levels}")
    seeds = ([int(s) for s in args.seeds.split(",")] if args.seeds
             else list(range(args.seed, args.seed + args.graphs)))
    if args.from_records:
        with open(args.from_records, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        return _finish(args, argv, records, 0.0, modes, levels)
    kwargs = {"modes": modes, "opt_levels": levels, "max_timesteps": args.max_timesteps,
              "runtime_levels": args.runtime_levels, "version": args.generator_version}
    jobs = [(s, {**kwargs, "cli": bool(args.cli_every) and (s % args.cli_every == 0)}) for s in seeds]
    start = time.perf_counter()
    records = []
    sink = open(args.records, "a", encoding="utf-8") if args.records else None

    def keep(i, rec):
        records.append(rec)
        if sink:
            sink.write(json.dumps(rec) + "\n")
            sink.flush()
        _progress(i, len(jobs), rec, args.verbose)

    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for i, rec in enumerate(pool.map(_work, jobs, chunksize=4)):
                keep(i, rec)
    else:
        for i, job in enumerate(jobs):
            keep(i, _work(job))
    if sink:
        sink.close()
    return _finish(args, argv, records, time.perf_counter() - start, modes, levels)


def _finish(args, argv, records, wall_seconds, modes, levels):
    from pmsm_compiler.testing.fuzz import summarize

    summary = summarize(records)
    summary.update(wall_seconds=round(wall_seconds, 1), modes=modes, opt_levels=levels,
                   max_timesteps=args.max_timesteps, cli_every=args.cli_every, runtime_levels=args.runtime_levels,
                   command=" ".join(shlex.quote(a) for a in ["python", "bench/fuzz_compiler.py", *(argv or sys.argv[1:])]))
    print_summary(summary)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for folder in save_examples(summary, args.out_dir):
            print(f"wrote {folder}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    return 1 if summary["graphs_with_failures"] else 0


def _progress(i, total, rec, verbose):
    fails = [r for r in rec["results"] if r["status"] == "fail"]
    if verbose:
        print(f"[{i + 1}/{total}] {rec['description']} ({rec['nodes']} nodes, {rec['seconds']} s)")
        for r in rec["results"]:
            if r["status"] != "ok":
                print(f"    {r['status']:<7} {r['check']:<11} {r['mode'] or '-':<6} {r['opt_level'] or '-':<8} "
                      f"{r['category'] or ''} {r['message'][:300]}")
                if r["status"] == "fail" and r["details"]:
                    print(f"            {json.dumps(r['details'])[:400]}")
    elif (i + 1) % 100 == 0 or i + 1 == total:
        print(f"[{i + 1}/{total}] ...", file=sys.stderr, flush=True)
    return fails


if __name__ == "__main__":
    sys.exit(main())
