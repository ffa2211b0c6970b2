"""Fixtures shared by several test files."""

import shutil

import pytest


@pytest.fixture(scope="session")
def library():
    """Path of the fused neuron kernels' library: skips where it cannot build (no C compiler), fails
    where a compiler is present and the build broke."""
    from pmsm_compiler import kernels

    status = kernels.status()
    if not status["available"]:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail(f"a C compiler is present but the fused kernels did not build: {status['reason']}")
        pytest.skip(f"fused kernels unavailable: {status['reason']}")
    return status["path"]


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: on a 2-core machine that is already busy, two OpenMP threads
    made 20 training steps of resnet_tiny about 10x slower. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def bundled_data_folder(tmp_path):
    """make(train, test): a folder with train.npz (the first ``train`` bundled images) and test.npz
    (the next ``test``), the layout pmsm-train --data reads."""
    import numpy as np

    from pmsm_compiler.data import load_bundled_sample

    def make(train: int, test: int):
        sample = load_bundled_sample()
        folder = tmp_path / "data"
        folder.mkdir()
        np.savez(folder / "train.npz", x=sample.x[:train], y=sample.y[:train])
        np.savez(folder / "test.npz", x=sample.x[train:train + test], y=sample.y[train:train + test])
        return folder

    return make
