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


def cli_errors(func):
    """Decorator for click commands: turn PmsmError (and I/O errors) into one line + exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
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
