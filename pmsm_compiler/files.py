"""Output files without half-written states: the package's one atomic writer and the check of an
output path. Free of onnx and numpy, so that a command-line tool can refuse a bad output path (and
print its --help) without importing them.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable

from pmsm_compiler.errors import InputError


def _default_file_mode() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, only used where /proc is unavailable
    os.umask(mask)
    return 0o666 & ~mask


class WriteCancelled(Exception):
    """Raised by an ``approve`` callback of ``write_atomic``: the new file is not to replace the old."""


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None], suffix: str = ".tmp",
                 approve: Callable[[], None] | None = None) -> None:
    """The package's one atomic writer: ``path`` is either the old file or the complete new one.

    ``write(tmp)`` fills a temporary file in the destination directory (named ``.<name>.*<suffix>``:
    a writer that chooses the format by extension, or a loader, gets the one it needs); it is then
    fsynced, given the permission bits of the file it replaces (or the default ones), and
    ``os.replace``d over ``path``. ``approve()``, if given, is called between the fsync and the
    replace, and may wait (e.g. for a verification that runs meanwhile) or raise ``WriteCancelled``.
    On any exception (KeyboardInterrupt and ``WriteCancelled`` included) the temporary file is
    removed and the exception re-raised.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = _default_file_mode()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp_name)
        fd = os.open(tmp_name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp_name, mode)
        if approve is not None:
            approve()
        os.replace(tmp_name, path)
        tmp_name = None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    try:  # make the rename durable; not possible everywhere (e.g. Windows)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically (``write_atomic``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    write_atomic(path, write)


def save_text_atomic(text: str, path: str | os.PathLike[str], encoding: str = "utf-8") -> None:
    """``save_bytes_atomic`` for text (written as-is, no newline translation)."""
    save_bytes_atomic(text.encode(encoding), path)


def check_output_path(path, what: str = "output") -> str:
    """Absolute path of an output file that can be written; InputError (one line) otherwise.

    Called by the command-line tools before any work, so that a bad output path fails at once
    and nothing is left half-written.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise InputError(f"cannot write {what} {path}: it is a directory")
    if not os.path.isdir(directory):
        raise InputError(f"cannot write {what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {path}: directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise InputError(f"cannot write {what} {path}: the file is not writable")
    return path
