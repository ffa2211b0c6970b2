"""The command-line tools, one module each; their console scripts start in :func:`launch`.

An interrupt (Ctrl-C, SIGINT) at any point of a tool, the imports of its module included, ends it
with ``error: interrupted`` on stderr and exit code 130, and no traceback. This module imports
nothing heavy, so that the handler is in place before numpy, onnx and onnxruntime load.

During an import the handler exits at once (``os._exit``): an exception raised there can unwind
through a C extension's initialisation (onnx's nanobind module calls back into Python while it
loads), which aborts the process; and nothing has been written yet that would need cleaning up.
Anywhere else it raises :class:`Interrupted`, so that ``finally`` blocks and the atomic writers
(which catch BaseException) clean up before the tool exits.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

_MESSAGE = "error: interrupted\n"
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap", "<frozen zipimport")


class Interrupted(BaseException):
    """Raised by the SIGINT handler of :func:`launch`.

    A BaseException, so that ``except Exception`` does not swallow it and the atomic writers
    (which catch BaseException) remove their temporary files; not a KeyboardInterrupt, which
    click turns into "Aborted!" and exit code 1.
    """


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith(_IMPORT_MACHINERY):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum, frame):
    if _importing(frame):
        os.write(2, _MESSAGE.encode())
        os._exit(130)
    raise Interrupted()


def launch(module: str) -> None:
    """Import ``module`` and run its click command ``main``, with the interrupt policy above."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an inherited SIG_IGN stays
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        main = importlib.import_module(module).main
        main()
    except (Interrupted, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message
        sys.stderr.write(_MESSAGE)
        sys.stderr.flush()
        sys.exit(130)


def compile_main():
    launch("pmsm_compiler.cli.compile")


def run_main():
    launch("pmsm_compiler.cli.run")


def entropy_main():
    launch("pmsm_compiler.cli.entropy")


def train_main():
    launch("pmsm_compiler.cli.train")


def export_main():
    launch("pmsm_compiler.cli.export")


def demo_main():
    launch("pmsm_compiler.cli.demo")
