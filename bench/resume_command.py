"""The command that resumes a pmsm-train run from its own train.log, on another machine.

    python bench/resume_command.py training_state/<run>/<model> --data /tmp/cifar10 --threads 4

A run resumed across sessions (and machines) must be resumed with the configuration it was
started with: pmsm-train refuses a checkpoint made with another one. The last ``command:`` line of
the run's train.log is that configuration; only what depends on the machine changes: the data
path, the thread count, and the output folder (set to the run folder given here, so that a
copied repository resumes in place). Prints the command, shell-quoted, on one line.
"""

from __future__ import annotations

import argparse
import shlex
import sys

MACHINE_OPTIONS = ("--data", "--threads", "--out")


def last_command(run_dir: str) -> list[str]:
    from pmsm_compiler.training.trainer import read_train_log

    sessions = read_train_log(run_dir)
    if not sessions:
        raise ValueError(f"{run_dir}: no train.log with a 'command:' line, so no command to resume")
    argv = shlex.split(sessions[-1]["command"])
    if not argv or argv[0] != "pmsm-train":
        raise ValueError(f"{run_dir}: the last command is not a pmsm-train command: {sessions[-1]['command']}")
    return argv


def resume_argv(run_dir: str, data: str, threads: int) -> list[str]:
    """The run's last command with the machine-dependent options replaced."""
    argv = last_command(run_dir)
    kept, i = [argv[0]], 1
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in MACHINE_OPTIONS:
            i += 1 if "=" in argv[i] else 2
            continue
        kept.append(argv[i])
        i += 1
    return kept + ["--data", data, "--threads", str(threads), "--out", run_dir]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        print(shlex.join(resume_argv(args.run_dir.rstrip("/"), args.data, args.threads)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
