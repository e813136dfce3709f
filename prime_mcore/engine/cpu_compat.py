"""Megatron-Core on CPU: the compatibility layer (a product feature, see notes/mcore_cpu.md).

Megatron-Core has no CPU mode: it calls ``torch.cuda.*`` and allocates with ``device="cuda"``
unconditionally. On a CPU-only torch every such call raises ``AssertionError: Torch not
compiled with CUDA enabled``. This module makes those calls land on the CPU instead.

Two layers, both no-ops whenever ``torch.cuda.is_available()``:

- ``enable()``: process-wide patches that only turn calls which would *raise* on a CPU build
  into their CPU equivalent (``torch.cuda.current_device``/``synchronize``/RNG, factory
  functions called with a cuda device, ``Tensor.cuda``). Code that works on a CPU build
  today behaves exactly as before. ``prime_mcore.engine`` calls it on import, before any
  ``megatron.core`` module is loaded.
- ``cuda_type_names()``: a context manager that makes ``Tensor.type()`` report
  ``torch.cuda.FloatTensor`` for CPU tensors. Megatron's optimizers assert those names; the
  patch changes the result of a working API, so it is scoped to the optimizer calls that
  need it (construction and ``step``) instead of being global.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections.abc import Iterator

import torch
import torch.utils._device

__all__ = ["enable", "is_enabled", "cuda_type_names"]

# Factories that megatron calls with a hard-coded device="cuda" (schedules.py, optimizer.py,
# grad_scaler.py, clip_grads.py, distrib_optimizer.py).
_FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn", "randint",
              "zeros_like", "ones_like", "empty_like", "full_like", "as_tensor")

_enabled = False


class _NullStream:
    """Stands in for a CUDA stream: on CPU every op is already synchronous."""

    def wait_event(self, *args: object, **kwargs: object) -> None:
        pass

    def wait_stream(self, *args: object, **kwargs: object) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _is_cuda(device: object) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    # A bare int is a CUDA ordinal for torch factories.
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_factory(orig):  # type: ignore[no-untyped-def]
    @functools.wraps(orig)
    def factory(*args, **kwargs):  # type: ignore[no-untyped-def]
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        kwargs.pop("pin_memory", None)  # pinning needs a CUDA context
        return orig(*args, **kwargs)

    return factory


def is_enabled() -> bool:
    """Whether the process-wide CPU patches are installed."""
    return _enabled


def enable() -> None:
    """Install the process-wide CPU patches; idempotent, and a no-op when CUDA is available."""
    global _enabled
    if _enabled or torch.cuda.is_available():
        return
    _enabled = True
    _stub_triton_kernels()
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")  # GlobalMemoryBuffer, RoPE inv_freq
    cuda.synchronize = lambda *a, **k: None  # dist_checkpointing preload_tensors
    cuda.empty_cache = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _NullStream()  # DDP grad sync (mcore >= 0.19)
    cuda.default_stream = lambda *a, **k: _NullStream()
    # torch.device("meta") looks factories up in this lru-cached table; build it before the
    # factories are wrapped, or it caches the wrappers and transformers 5 then builds HF models
    # with uninitialised rope buffers (notes/mbridge.md).
    torch.utils._device._device_constructors()
    for name in _FACTORIES:
        setattr(torch, name, _cpu_factory(getattr(torch, name)))
    # language_module.setup_embeddings_and_output_layer calls weight.data.cuda() (PP + tied).
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    _route_cuda_rng_to_cpu()


def _stub_triton_kernels() -> None:
    """mcore >= 0.19 imports triton unconditionally in one MoE module; stub it when absent."""
    try:
        import triton  # noqa: F401
    except ImportError:
        name = "megatron.core.transformer.moe.ops.paged_stash"
        stub = types.ModuleType(name)
        stub.GLOBAL_BLOCK_SIZE = 1024  # type: ignore[attr-defined]

        def _needs_cuda(*args: object, **kwargs: object) -> None:
            raise RuntimeError("paged_stash kernels need triton and CUDA")

        stub.paged_stash_copy_kernel = _needs_cuda  # type: ignore[attr-defined]
        stub.paged_stash_pop_kernel = _needs_cuda  # type: ignore[attr-defined]
        sys.modules.setdefault(name, stub)


def _route_cuda_rng_to_cpu() -> None:
    """Megatron's model-parallel RNG tracker (and activation recompute) save and restore the
    "CUDA" generator; on CPU that generator is the default CPU one."""
    torch.cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    from megatron.core.tensor_parallel import random as mcore_random  # imports no triton

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


@contextlib.contextmanager
def cuda_type_names() -> Iterator[None]:
    """Report CPU tensors as ``torch.cuda.*Tensor`` from ``Tensor.type()`` inside the block.

    Megatron's Float16/FP32/Distributed optimizers and ``clip_grads`` assert
    ``param.type() == 'torch.cuda.FloatTensor'`` (or the Half/BFloat16 names). A no-op on CUDA.
    """
    if torch.cuda.is_available():
        yield
        return
    orig = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):  # type: ignore[no-untyped-def]
        if dtype is None and not kwargs:
            name = orig(self)
            if name.startswith("torch.cuda."):
                return name
            return name.replace("torch.", "torch.cuda.", 1)
        return orig(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = orig  # type: ignore[method-assign]
