"""Streaming policy weights into a rollout engine: buckets, checksums, the vLLM worker side.

The trainer hands over an iterable of ``(HF name, full tensor)`` pairs (TP shards already
gathered and names mapped by ``prime_mcore.convert``). They are grouped into buckets of
about ``bucket_bytes`` so that at most one bucket is in flight at a time.

On the vLLM side ``WeightSyncExtension`` is mixed into every worker
(``worker_extension_cls``). An update is a session, as in vLLM's own weight-transfer
engines: ``prime_begin_update`` puts the model into layer-wise reload mode, each
``prime_load_bucket*`` call feeds a bucket to ``model.load_weights`` (a layer is
re-processed, e.g. re-packed for the CPU GEMM kernels, once all its tensors have arrived,
so a bucket may split a fused q/k/v or gate/up layer), and ``prime_finish_update``
finalises. Plain ``model.load_weights`` outside that mode fails on CPU because linear
weights are prepacked (notes/vllm_cpu.md).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import torch

DEFAULT_BUCKET_BYTES = 256 << 20
CHECKSUM_MOD = 2**52

NamedTensors = list[tuple[str, torch.Tensor]]


def tensor_checksum(tensor: torch.Tensor) -> int:
    """Sum of the tensor's raw bits as int32 words, mod 2**32.

    Exact and independent of summation order, device and thread count, so the sender's and
    a worker's values compare with ``==``; any single changed bit changes it. As fast as a
    float32 sum (a float64 sum is ~10x slower on CPU).
    """
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    whole = flat.numel() // 4 * 4
    try:
        words = flat[:whole].view(torch.int32)
    except RuntimeError:  # storage offset not 4-byte aligned
        words = flat[:whole].clone().view(torch.int32)
    total = int(torch.sum(words, dtype=torch.int32)) if whole else 0  # wraps mod 2**32
    if whole < flat.numel():
        total += int(flat[whole:].to(torch.int64).sum())
    return total & 0xFFFFFFFF


def bucket_checksum(bucket: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Name-aware combination of ``tensor_checksum``s, mod 2**52 (exact as a float64).

    Additive over tensors, so buckets combine by addition mod 2**52 (``combine_checksums``).
    """
    return combine_checksums((tensor_checksum(t) + 1) * (zlib.crc32(name.encode()) | 1)
                             for name, t in bucket)


def combine_checksums(parts: Iterable[int]) -> int:
    return sum(parts) % CHECKSUM_MOD


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]],
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Iterator[NamedTensors]:
    """Group tensors in stream order into buckets of at most ``bucket_bytes`` (a larger
    tensor travels alone). Raises on a repeated name: it would load twice."""
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes={bucket_bytes} must be positive")
    seen: set[str] = set()
    bucket: NamedTensors = []
    size = 0
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"weight {name!r} appears twice in one update")
        seen.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def bucket_to_bytes(bucket: NamedTensors) -> bytes:
    """safetensors bytes of a bucket: the multiprocess payload (tensors cannot be pickled
    across vLLM's engine-core boundary, and bytes need no insecure serialization)."""
    from safetensors.torch import save

    storages: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in bucket:
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing storage (tied embeddings, views): copy those.
        flat[name] = t.clone() if ptr in storages else t
        storages.add(ptr)
    return save(flat)


def bucket_from_bytes(blob: bytes) -> NamedTensors:
    from safetensors.torch import load

    return list(load(blob).items())


class WeightSyncExtension:
    """vLLM worker extension (``worker_extension_cls``); runs inside each vLLM worker.

    Method names carry a ``prime_`` prefix: vLLM refuses an extension attribute that the
    worker class already has (it has ``update_weights``, ``start_weight_update``, ...).
    Returned values are plain ints/lists so they cross process boundaries.
    """

    def prime_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(self.model_runner.get_model())  # type: ignore[attr-defined]
        self.prime_loaded_names: set[str] = set()

    def prime_load_bucket(self, bucket: NamedTensors, verify: bool = True) -> int | None:
        """Load one bucket of tensors; returns the checksum of what arrived when ``verify``
        (the in-process transport hands over the sender's own tensors: nothing to verify)."""
        from vllm.config import set_current_vllm_config

        checksum = bucket_checksum(bucket) if verify else None
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            loaded = model.load_weights(iter(bucket))
        if loaded is not None:
            self.prime_loaded_names.update(loaded)
        return checksum

    def prime_load_bucket_bytes(self, blob: bytes) -> int | None:
        """Load one safetensors-serialised bucket (multiprocess transport)."""
        return self.prime_load_bucket(bucket_from_bytes(blob))

    def prime_finish_update(self) -> list[str]:
        """Finalise the reload; returns the vLLM parameters that received no data."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        runner = self.model_runner  # type: ignore[attr-defined]
        model = runner.get_model()
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            # Layers that got nothing get their previous kernel tensors back here.
            finalize_layerwise_reload(model, self.vllm_config.model_config)  # type: ignore[attr-defined]
            _reprocess_tied_embeddings(model)
        # Same invalidations as GPUModelRunner.reload_weights.
        runner.reset_lora_state()
        runner.reset_encoder_cache()
        runner.reset_mm_cache()
        expected = {name for name, _ in model.named_parameters()}
        return sorted(expected - self.prime_loaded_names)


def _reprocess_tied_embeddings(model: torch.nn.Module) -> None:
    """Re-derive the kernel state of embeddings that share their weight (tied lm_head).

    The loaders route a tied weight to the input embedding only (Qwen2 even drops
    ``lm_head.weight``), so the lm_head layer is never re-processed, while on CPU its
    processing built a packed GEMM copy of the weight: it would keep computing logits with
    the old weights. Unquantized embedding processing is idempotent (a no-op on GPUs).
    """
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None and isinstance(getattr(module, "quant_method", None),
                                             UnquantizedEmbeddingMethod):
            owners.setdefault(weight.data_ptr(), []).append(module)
    for modules in owners.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)
