"""Error types and the CLI error policy.

Every error a user can cause is a ``PmsmError`` with a one-line message; the command-line tools
print it as ``error: <message>`` and exit with ``exit_code`` (2 for bad input, 1 for a failed
verification), never with a traceback.
"""

from __future__ import annotations

import functools
import sys

import click


class PmsmError(Exception):
    """Base class: a one-line, user-facing error."""

    exit_code = 2


class InputError(PmsmError):
    """Bad input: unreadable or malformed model, data, or arguments (exit code 2)."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model is valid ONNX but uses something the compiler cannot convert (exit code 2)."""


class VerificationError(PmsmError):
    """The compiled SNN does not reproduce the ANN within the stated policy (exit code 1)."""

    exit_code = 1


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def quiet_third_party_logs() -> None:
    """Keep library log lines out of a tool's output: onnx-graphsurgeon prints its warnings on
    stdout (e.g. while folding constants), and onnxruntime's default logger, which sessions the
    tools do not configure (graphsurgeon's folding) use, writes warnings and errors to stderr.
    Failures still surface as exceptions, and so as the tool's one error line."""
    try:
        from onnx_graphsurgeon.logger import G_LOGGER
    except ImportError:
        pass
    else:
        G_LOGGER.severity = G_LOGGER.CRITICAL + 1  # critical() still raises, without printing
    try:
        import onnxruntime
    except ImportError:
        pass
    else:
        onnxruntime.set_default_logger_severity(4)  # fatal only


def cli_errors(func):
    """Decorator for click commands: turn PmsmError (and I/O errors) into one line + exit code,
    with third-party log lines silenced (``quiet_third_party_logs``) unless the command's
    ``verbosity`` is -vv."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            if kwargs.get("verbosity", 1) < 3:  # -vv (options.DEBUG) lets the libraries' warnings through
                quiet_third_party_logs()
            return func(*args, **kwargs)
        except PmsmError as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except (OSError, ValueError) as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)

    return wrapper
