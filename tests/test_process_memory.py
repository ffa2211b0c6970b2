"""pmsm_compiler.process_memory: a freed large block's pages serve the next one (glibc); the peak."""

import os
import platform
import subprocess
import sys

import pytest

from pmsm_compiler import process_memory

BLOCK = 64 << 20  # over glibc's largest dynamic mmap threshold (32 MiB): a mapping of its own by default
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# A block written in full (b"x" * n: malloc and a memset; bytes(n) would be calloc, which skips
# fresh zero pages), a smaller one after it (the heap's top stays in use: glibc gives a free top
# back), the first freed, and another one of its size: the page faults of that one.
SECOND_BLOCK_FAULTS = f"""
import resource, sys
if sys.argv[1] == "keep":
    from pmsm_compiler.process_memory import keep_freed_memory
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = b"x" * {BLOCK}
after = b"y" * (1 << 20)
del block
before = faults()
block = b"x" * {BLOCK}
print(faults() - before)
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")


def _second_block_faults(mode: str, env: dict) -> int:
    proc = subprocess.run([sys.executable, "-c", SECOND_BLOCK_FAULTS, mode], capture_output=True, text=True,
                          env=env, check=True)
    return int(proc.stdout.split()[-1])


@glibc_only
def test_a_freed_large_block_serves_the_next_without_page_faults():
    # glibc's own thresholds as the environment may set them would decide the default case
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    pages = BLOCK // PAGE
    default = _second_block_faults("default", env)
    kept = _second_block_faults("keep", env)
    assert default > pages // 2  # glibc maps such a block afresh each time: the premise of the module
    assert kept < pages // 100


def test_it_changes_nothing_where_the_c_library_is_not_glibc(monkeypatch):
    monkeypatch.setattr(process_memory.sys, "platform", "darwin")
    assert process_memory.keep_freed_memory() is False


PEAK_AFTER_A_BLOCK = f"""
from pmsm_compiler.process_memory import peak_memory_bytes
before = peak_memory_bytes()
block = b"x" * {4 * BLOCK}
print(before, peak_memory_bytes())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="no peak to read")
def test_the_peak_is_in_bytes_and_grows_with_what_the_process_holds():
    # started from this test process, whatever its size: the child's figure is its own (Linux's
    # ru_maxrss would carry this process's resident size over the fork and exec)
    proc = subprocess.run([sys.executable, "-c", PEAK_AFTER_A_BLOCK], capture_output=True, text=True, check=True)
    before, after = (int(v) for v in proc.stdout.split())
    assert 1 << 20 < before < 4 * BLOCK  # an interpreter and one small module: about 10 MiB
    assert after >= 4 * BLOCK  # the block alone (in KiB the figure would be a thousand times smaller)


def test_a_child_of_a_large_process_reports_its_own_peak():
    """The fork-and-exec case directly: a child forked from a process holding 512 MiB."""
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux's ru_maxrss carries the forking process's size over exec")
    code = f"""
import os, subprocess, sys
held = b"x" * {8 * BLOCK}
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-c", "from pmsm_compiler.process_memory import peak_memory_bytes; "
                                                    "print(peak_memory_bytes())"])
os.waitpid(pid, 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(proc.stdout.split()[-1]) < 4 * BLOCK  # the child's tens of MiB, not the parent's 512 MiB


def test_the_peak_is_none_where_nothing_gives_it(monkeypatch):
    monkeypatch.setattr(process_memory.sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource raises ImportError
    assert process_memory.peak_memory_bytes() is None
