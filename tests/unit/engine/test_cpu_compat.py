"""The CPU compatibility layer: installed on import without CUDA, scoped where it must be."""

from __future__ import annotations

import pytest
import torch

import prime_mcore.engine  # noqa: F401  (installs the layer)
from prime_mcore.engine import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is CPU-only")


def test_enabled_on_import_and_idempotent():
    assert cpu_compat.is_enabled()
    zeros = torch.zeros
    cpu_compat.enable()
    assert torch.zeros is zeros  # a second call wraps nothing twice


def test_cuda_calls_land_on_cpu():
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.empty(2, device=torch.device("cuda", 0), pin_memory=True).device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.cuda.current_device() == torch.device("cpu")
    torch.cuda.synchronize()  # a no-op instead of "Torch not compiled with CUDA enabled"


def test_cuda_rng_is_the_cpu_generator():
    torch.cuda.manual_seed(123)
    state = torch.cuda.get_rng_state()
    first = torch.rand(3)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


def test_type_names_are_scoped():
    t = torch.ones(1)
    with cpu_compat.cuda_type_names():
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert t.type(torch.float64).dtype == torch.float64  # conversions still work
    assert t.type() == "torch.FloatTensor"


def test_meta_device_still_redirects_factories():
    # transformers 5 builds models under torch.device("meta"); the factory table must hold
    # the original functions or rope buffers come out uninitialised (notes/mbridge.md).
    with torch.device("meta"):
        assert torch.tensor([1.0]).device.type == "meta"
        assert torch.arange(3).device.type == "meta"
