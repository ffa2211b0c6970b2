"""A tool's own process and its memory: large freed blocks kept for reuse (glibc only), and the
peak the JSON reports give.

glibc gives a block of at least ``M_MMAP_THRESHOLD`` bytes (dynamic, from 128 KiB up to at most
32 MiB) a fresh mapping of its own, unmapped when it is freed, and gives the heap's free top back
to the kernel once more than ``M_TRIM_THRESHOLD`` lies there. A compile allocates and frees
copies of the weights many times over (protobuf's reads of ``raw_data``, the folded arrays,
onnxruntime's copies and its layout transforms), and every page of a fresh block is a page fault
and a zeroed page. VGG-16 (two 64 MiB classifier weights, over the 32 MiB ceiling): 420k minor
faults (1.6 GiB of fresh pages for a 128 MB model) and 1.0 s of system time in a 2.2 s compile.

``keep_freed_memory()`` raises the mmap threshold to 1 GiB, so that large blocks come from the
heap and a freed block's pages serve the next one, while the heap's top is still given back
(glibc's default trim threshold): VGG-16's folded compile 2.41 → 2.21 s (median of 6 alternated
rounds, 411k → 320k faults), exact 3.38 → 3.22 s, peaks within the spread. Keeping the top too
(a trim threshold of 2 GiB) saved 0.1 s more, folded, but raised exact mode's peak by 11 %
(1,161 → 1,285 MiB): fragments of the heap that no later block fits (``docs/benchmarks.md``,
"Compile at scale"). A model whose arrays are all under the dynamic threshold (ViT-S: at most
2.4 MB) is unchanged.

Only the tools call it (``pmsm-compile``): a process of ours that ends after one job. The library
leaves the allocator of a user's process as it is.

``peak_memory_bytes()``: the process's peak resident memory so far, which the tools' JSON reports
record (``peak_memory_bytes``) so that a CI pipeline can follow a model's memory from run to run.
"""

from __future__ import annotations

import sys

#: mallopt's parameter (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
#: a block this large still gets a mapping of its own (mallopt takes a C int)
MMAP_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold as the module docstring says; False where the C library is not
    glibc (musl, macOS, Windows) or refuses it, and nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # here: pmsm-run reads the peak only

    try:
        libc = ctypes.CDLL(None)  # the symbols the process has loaded, the C library's among them
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: musl has a mallopt that does nothing
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def peak_memory_bytes() -> int | None:
    """This process's peak resident set size so far, in bytes, or None where it cannot be read
    (Windows). Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's
    memory. Not ``getrusage``'s ru_maxrss there: it carries over, across ``exec``, the resident
    size of the process that forked it (a tool started by a large Python process reported that
    process's 1.2 GiB). Elsewhere ``getrusage`` (macOS: bytes)."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmHWM:"):
                        return int(line.split()[1]) * 1024  # kB
        except (OSError, ValueError, IndexError):
            pass
    try:
        import resource
    except ImportError:
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024
