"""pmsm_compiler.kernels: building the fused neuron kernels, the cache, and the fallbacks."""

from __future__ import annotations

import os
import shutil

import pytest

from pmsm_compiler import kernels


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A clean module state and a private cache folder."""
    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setenv("PMSM_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PMSM_KERNELS", raising=False)
    return tmp_path / "cache"


needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@needs_cc
def test_builds_into_the_cache_once_and_exports_the_entry_point(fresh):
    path = kernels.build()
    assert path.is_file() and str(path).startswith(str(fresh))
    mtime = os.path.getmtime(path)
    assert kernels.build() == path and os.path.getmtime(path) == mtime  # cached, not rebuilt
    import ctypes

    lib = ctypes.CDLL(str(path))
    assert lib.pmsm_kernels_api_version() == 17
    assert hasattr(lib, "RegisterCustomOps")
    assert kernels.status() == {"available": True, "path": str(path), "reason": None}
    assert [p.name for p in fresh.rglob("*") if p.is_file()] == [path.name]  # no temporary left behind


def test_disabled_by_environment(fresh, monkeypatch):
    monkeypatch.setenv("PMSM_KERNELS", "off")
    assert kernels.status() == {"available": False, "path": None, "reason": "disabled by PMSM_KERNELS"}


def test_a_failing_compiler_gives_a_reason_not_an_exception(fresh, monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                    "echo 'fatal: no can do' >&2; exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    status = kernels.status()
    assert status["available"] is False and status["path"] is None
    assert status["reason"] == "compiling the fused kernels failed: fatal: no can do"
    assert not any(p.is_file() for p in fresh.rglob("*"))  # no partial library in the cache


def test_no_compiler(fresh, monkeypatch):
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    assert kernels.status()["reason"].startswith("no C compiler found")


@needs_cc
def test_a_corrupt_cached_library_is_rebuilt(fresh, monkeypatch, tmp_path):
    built = kernels.build()
    good = built.read_bytes()
    # Corrupt the entry of a second cache, not the library this process has mapped: truncating a
    # mapped shared object makes the process die of SIGBUS when the loader next touches it.
    other = tmp_path / "other-cache"
    corrupt = other / built.relative_to(fresh)
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"\x7fELF truncated")
    monkeypatch.setenv("PMSM_KERNEL_CACHE", str(other))
    assert kernels.build() == corrupt and corrupt.read_bytes() == good


@needs_cc
def test_an_unwritable_cache_gives_a_reason(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PMSM_KERNEL_CACHE", str(blocker / "cache"))
    assert kernels.status()["reason"].startswith("cannot write the kernel cache")


@needs_cc
def test_a_read_only_home_falls_back_to_the_temporary_folder(fresh, monkeypatch, tmp_path):
    blocker = tmp_path / "home-file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("PMSM_KERNEL_CACHE")
    monkeypatch.setattr(kernels, "cache_dir", lambda: blocker / "cache")
    monkeypatch.setattr(kernels.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    path = kernels.build()
    assert str(path).startswith(str(tmp_path / "tmp")) and path.is_file()
