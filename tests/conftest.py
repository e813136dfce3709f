"""Suite-wide pytest setup: GPU tests are skipped (with the reason) where CUDA is absent."""

import os

import pytest

# Two cores: keep each test process from oversubscribing them with intra-op threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA: this machine has no GPU (run on a GPU node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
