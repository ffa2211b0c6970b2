"""Fused neuron kernels for onnxruntime's CPU execution provider, built on first use.

``neurons.c`` implements, for every neuron layer and timestep, integrate + fire + reset + spike
count in one pass over memory (see its header comment and ``runtime/fuse_neuron_kernels.py``).
It is a custom-op library over onnxruntime's stable C API (version 17, onnxruntime >= 1.17); it
links against nothing, so one build serves any onnxruntime wheel of that version or newer. The
C API header it needs (``include/onnxruntime_c_api.h``, MIT licence, from onnxruntime 1.21.0)
ships with this package because the onnxruntime wheel has none.

The library is compiled with the machine's C compiler (``$CC``, else ``cc``/``gcc``/``clang``)
the first time a session asks for it, into a per-user cache keyed by the source, the flags and
the compiler (``$PMSM_KERNEL_CACHE``, else ``~/.cache/pmsm-compiler/kernels``, or a folder in
the temporary directory when the home is not writable). Without a
compiler, or if the build fails, ``library()`` returns None and the runtime runs the neurons'
ONNX function bodies instead, with the same results (``status()`` says why).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "neurons.c"
HEADER = HERE / "include" / "onnxruntime_c_api.h"
MIN_ONNXRUNTIME = (1, 17)
# -ffp-contract=off and no -ffast-math: the same IEEE float32 operations as the ONNX bodies
# (-fno-math-errno and -fno-trapping-math only let floorf vectorize; they change no result).
FLAGS = ["-O3", "-std=c11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
         "-fvisibility=hidden"]

_STATE: dict = {}


def _compiler() -> str | None:
    for name in ([os.environ["CC"]] if os.environ.get("CC") else []) + ["cc", "gcc", "clang"]:
        path = shutil.which(name.split()[0])
        if path:
            return path
    return None


def _suffix() -> str:
    return ".dylib" if sys.platform == "darwin" else ".so"


def cache_dir() -> Path:
    root = os.environ.get("PMSM_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "pmsm-compiler" / "kernels"


def _onnxruntime_ok() -> str | None:
    import onnxruntime as ort

    try:
        version = tuple(int(p) for p in ort.__version__.split(".")[:2])
    except ValueError:
        return None
    if version < MIN_ONNXRUNTIME:
        return f"onnxruntime {ort.__version__} is older than {'.'.join(map(str, MIN_ONNXRUNTIME))}"
    return None


def build(force: bool = False) -> Path:
    """Compile the library (or find it in the cache); raise RuntimeError with the reason."""
    if sys.platform == "win32":
        raise RuntimeError("building the fused kernels is not supported on Windows")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"C compiler {cc} does not run: {exc}") from None
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), HEADER.read_bytes(), " ".join(FLAGS).encode(), version.encode(),
                 platform.machine().encode(), sys.platform.encode()):
        key.update(part)
    name = f"{key.hexdigest()[:16]}/libpmsm_kernels{_suffix()}"
    roots = [cache_dir()]
    if not os.environ.get("PMSM_KERNEL_CACHE"):  # a read-only home: fall back to the temp folder
        roots.append(Path(tempfile.gettempdir()) / f"pmsm-compiler-kernels-{os.getuid()}")
    for root in roots:
        target = root / name
        if target.is_file() and not force and _loads(target):
            return target
    from pmsm_compiler.files import write_atomic

    def compile_into(tmp: str) -> None:
        res = subprocess.run([cc, *FLAGS, f"-I{HEADER.parent}", str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            first = (res.stderr.strip().splitlines() or ["(no message)"])[0]
            raise RuntimeError(f"compiling the fused kernels failed: {first}")
        if not _loads(Path(tmp)):
            raise RuntimeError("the compiled fused kernels do not load")

    error = None
    for root in roots:
        target = root / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(target.parent, os.W_OK):
                raise PermissionError(13, "Permission denied")
        except OSError as exc:
            error = error or f"cannot write the kernel cache {target.parent}: {exc.strerror or exc}"
            continue
        try:  # atomic: concurrent builders leave one complete library
            write_atomic(target, compile_into, suffix=_suffix())
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"compiling the fused kernels failed: {exc}") from None
        return target
    raise RuntimeError(error)


def _loads(path: Path) -> bool:
    """The library loads here and is the version this module expects."""
    import ctypes

    try:
        return ctypes.CDLL(str(path)).pmsm_kernels_api_version() == 17
    except (OSError, AttributeError):
        return False


def library() -> str | None:
    """Path of the built library, or None when it cannot be had (``status()`` says why)."""
    if "path" not in _STATE:
        if os.environ.get("PMSM_KERNELS", "").lower() in ("0", "off", "no"):
            _STATE.update(path=None, reason="disabled by PMSM_KERNELS")
        elif (why := _onnxruntime_ok()) is not None:
            _STATE.update(path=None, reason=why)
        else:
            try:
                _STATE.update(path=str(build()), reason=None)
            except RuntimeError as exc:
                _STATE.update(path=None, reason=str(exc))
    return _STATE["path"]


def status() -> dict:
    """{"available": bool, "path": str | None, "reason": str | None}."""
    path = library()
    return {"available": path is not None, "path": path, "reason": _STATE.get("reason")}


__all__ = ["build", "library", "status", "cache_dir"]
