"""The options every tool spells the same way (polygraphy / onnxsim / torchrun habits), and the
exit codes their ``--help`` states. Imports click only, so that ``--help`` stays fast.

- ``--json PATH``: the tool's report as JSON (``pmsm-compile --report`` is an alias);
- ``--plot DIR``: a folder the tool writes its PNG figures into (``pmsm-entropy`` also takes a
  ``.png`` file, its earlier spelling);
- ``--providers / --threads / --opt-level``: the onnxruntime session settings, wherever a tool
  runs a model;
- ``-v`` (details; ``-vv`` also lets the libraries' own warnings through) and ``-q`` (errors and
  the summary line only);
- ``--progress/--no-progress``: a progress bar on stderr, by default only when stderr is a
  terminal (never in a CI log);
- ``--mode folded|exact`` and ``--exact``: the compile mode, both spellings on every tool that
  compiles.
"""

from __future__ import annotations

import os
import sys

import click

EXIT_CODES = ("Exit codes: 0 success; 1 verification failed (the SNN does not reproduce the ANN; "
              "no model written); 2 bad input or unsupported model (one line on stderr, starting with "
              "'error:'); 130 interrupted (Ctrl-C).")
OPT_LEVELS = ("disable", "basic", "extended", "all")
MODES = ("folded", "exact")  # compiler.MODES, without importing the compiler for --help
QUIET, NORMAL, VERBOSE, DEBUG = 0, 1, 2, 3


def command(prog_name: str, **settings):
    """``click.command`` with -h/--help, the exit codes as the help's epilog and --version."""

    def decorate(func):
        func = click.version_option(package_name="pmsm-compiler", prog_name=prog_name)(func)
        return click.command(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES,
                             **settings)(func)

    return decorate


def verbosity(quiet_help: str = "Print only errors and the summary line.",
              verbose_help: str = "More detail; -vv also lets the libraries' own warnings through."):
    """-v/--verbose (count) and -q/--quiet (flag) → one ``verbosity`` argument: QUIET (0), NORMAL
    (1), VERBOSE (2) or DEBUG (3, -vv). ``cli_errors`` leaves third-party logs on at DEBUG."""

    def callback(ctx, param, value):
        quiet, verbose = ctx.params.pop("_quiet", False), value
        if quiet and verbose:
            raise click.BadOptionUsage("verbosity", "-q and -v exclude each other")
        return QUIET if quiet else min(NORMAL + verbose, DEBUG)

    def decorate(func):
        func = click.option("-v", "--verbose", "verbosity", count=True, callback=callback, help=verbose_help)(func)
        return click.option("-q", "--quiet", "_quiet", is_flag=True, is_eager=True, expose_value=False,
                            callback=lambda ctx, param, value: ctx.params.__setitem__("_quiet", value),
                            help=quiet_help)(func)

    return decorate


def json_option(help_text: str = "Write the report as JSON here (written atomically).", *aliases: str):
    return click.option("--json", *aliases, "json_path", type=click.Path(), help=help_text)


def progress_option(func):
    return click.option("--progress/--no-progress", default=None,
                        help="Progress bar on stderr (default: only when stderr is a terminal).")(func)


def show_progress(progress: bool | None, verbosity_level: int = NORMAL) -> bool:
    """The --progress choice, or by default whether stderr is a terminal; never with -q."""
    if verbosity_level == QUIET:
        return False
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return progress


PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "dml": "DmlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "openvino": "OpenVINOExecutionProvider"}


def parse_providers(values) -> list[str] | None:
    """Repeatable / comma-separated --providers → full onnxruntime names (short aliases allowed)."""
    names = []
    for value in values or ():
        for part in value.split(","):
            part = part.strip()
            if part:
                names.append(PROVIDER_ALIASES.get(part.lower(), part))
    return names or None


def check_threads(threads: int) -> int:
    from pmsm_compiler.errors import InputError

    if threads < 0:
        raise InputError(f"--threads must be >= 0, got {threads}")
    return threads


def check_plot_dir(path: str, what: str = "plots to") -> str:
    """The --plot folder: one that exists and is writable, or can be created (its nearest existing
    parent is); InputError (one line) otherwise."""
    from pmsm_compiler.errors import InputError

    path = os.path.abspath(os.path.expanduser(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise InputError(f"cannot write {what} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {path}: {probe} is not writable")
    return path


def session_options(func):
    """--providers, --threads and --opt-level: how every onnxruntime session of the tool runs."""
    func = click.option("--threads", type=int, default=0, show_default=True,
                        help="onnxruntime intra-op threads (0: onnxruntime's default; a compile's verification then "
                             "runs the ANN and the SNN side by side on half the cores each).")(func)
    func = click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="all", show_default=True,
                        help="onnxruntime graph optimization level (SNN and ANN alike).")(func)
    return click.option("--providers", multiple=True,
                        help="onnxruntime execution provider(s), in priority order; repeatable or "
                             "comma-separated (cpu, cuda or full names). Default: CPUExecutionProvider.")(func)


def mode_options(default: str = "folded"):
    """--mode folded|exact and its flag spelling --exact (the same as --mode exact)."""

    def decorate(func):
        func = click.option("--exact", "exact", is_flag=True,
                            help="Keep the ANN's arithmetic (no folding): T=1 is bit-identical. "
                                 "Same as --mode exact.")(func)
        return click.option("--mode", type=click.Choice(MODES), default=None,
                            help=f"Compilation mode (folded: integer spike traffic, thresholds in the weights; "
                                 f"exact: the ANN's arithmetic). Default: {default}.")(func)

    return decorate


def resolve_mode(mode: str | None, exact: bool, default: str = "folded") -> str:
    """The mode that --mode and --exact name together; InputError (exit 2) when they disagree."""
    from pmsm_compiler.errors import InputError

    if exact and mode not in (None, "exact"):
        raise InputError(f"--exact contradicts --mode {mode}")
    return "exact" if exact else (mode or default)
