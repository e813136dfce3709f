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

import json
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch

DEFAULT_BUCKET_BYTES = 256 << 20
CHECKSUM_MOD = 2**52

NamedTensors = list[tuple[str, torch.Tensor]]


def tensor_checksum(tensor: torch.Tensor) -> int:
    """Sum of the tensor's raw bits as int32 words, mod 2**32.

    Exact and independent of summation order, device and thread count, so the sender's and
    a worker's values compare with ``==``; any single changed bit changes it.
    """
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    whole = flat.numel() // 4 * 4
    if flat.device.type == "cpu":
        # numpy's single-threaded SIMD loop runs at memory speed; torch's OpenMP reduction
        # stalls in its barriers when other jobs share the cores (0.1 s vs 0.7-1.8 s for
        # 513 MB on a loaded 2-core machine).
        data = flat.numpy()
        total = int(np.add.reduce(_int32_words(data[:whole]), dtype=np.uint32)) if whole else 0
        tail = int(data[whole:].sum(dtype=np.int64))
    else:
        try:
            words = flat[:whole].view(torch.int32)
        except RuntimeError:  # storage offset not 4-byte aligned
            words = flat[:whole].clone().view(torch.int32)
        total = int(torch.sum(words, dtype=torch.int32)) if whole else 0  # wraps mod 2**32
        tail = int(flat[whole:].to(torch.int64).sum())
    return (total + tail) & 0xFFFFFFFF


def _int32_words(data: np.ndarray) -> np.ndarray:
    """``data`` (uint8, length a multiple of 4) as uint32 words; copies a misaligned view."""
    if data.ctypes.data % 4:
        data = data.copy()
    return data.view(np.uint32)


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


# safetensors dtype names (https://github.com/huggingface/safetensors, format spec).
_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
              torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
              torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
_ST_TORCH = {name: dtype for dtype, name in _ST_DTYPES.items()}


def bucket_to_bytes(bucket: NamedTensors) -> memoryview:
    """A bucket in the safetensors format: the multiprocess payload (tensors cannot be
    pickled across vLLM's engine-core boundary, and bytes need no insecure serialization).

    Written here rather than by ``safetensors.torch.save``, which copies every tensor twice
    (about 2x slower for 513 MB) and refuses tensors that share storage (tied embeddings).
    """
    tensors = [(name, t.detach().to("cpu").contiguous().reshape(-1)) for name, t in bucket]
    header: dict[str, dict] = {}
    size = 0
    for (name, t), (_, original) in zip(tensors, bucket, strict=True):
        if t.dtype not in _ST_DTYPES:
            raise ValueError(f"weight {name!r} has unsupported dtype {t.dtype}")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(original.shape),
                        "data_offsets": [size, size + nbytes]}
        size += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the spec pads the header to 8 bytes with spaces
    start = 8 + len(head)
    # Not zero-filled (every byte is written below); numpy's copies are plain memcpys, where
    # torch's OpenMP copy stalls when other jobs share the cores.
    blob = torch.empty(start + size, dtype=torch.uint8).numpy()
    blob[:start] = np.frombuffer(struct.pack("<Q", len(head)) + head, dtype=np.uint8)
    for name, t in tensors:
        begin, end = header[name]["data_offsets"]
        blob[start + begin:start + end] = t.view(torch.uint8).numpy()
    return memoryview(blob)


def bucket_from_bytes(blob: bytes | bytearray | memoryview) -> NamedTensors:
    """The tensors of a ``bucket_to_bytes`` (or any safetensors) blob, in stored order.

    Zero-copy views into ``blob`` (the loader copies them into the model), except a tensor
    whose offset is not a multiple of its element size, which is copied to be aligned.
    """
    (size,) = struct.unpack_from("<Q", blob)
    header = json.loads(bytes(blob[8:8 + size]))
    header.pop("__metadata__", None)
    start = 8 + size
    with warnings.catch_warnings():  # a bytes blob is read-only: the views are only read
        warnings.simplefilter("ignore", UserWarning)
        data = torch.frombuffer(blob, dtype=torch.uint8)
    out: NamedTensors = []
    for name, info in header.items():
        dtype = _ST_TORCH[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = data[start + begin:start + end]
        if (start + begin) % dtype.itemsize:
            raw = raw.clone()
        out.append((name, raw.view(dtype).reshape(info["shape"])))
    return out


class WeightSyncExtension:
    """vLLM worker extension (``worker_extension_cls``); runs inside each vLLM worker.

    Method names carry a ``prime_`` prefix: vLLM refuses an extension attribute that the
    worker class already has (it has ``update_weights``, ``start_weight_update``, ...).
    Returned values are plain ints/lists so they cross process boundaries.
    """

    def prime_begin_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        # Before the reload moves the parameters to the meta device (kernel state to compare).
        self.prime_tied_kernels = _tied_embedding_kernels(model)
        with set_current_vllm_config(self.vllm_config):  # type: ignore[attr-defined]
            initialize_layerwise_reload(model)
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

    def prime_load_bucket_bytes(self, blob: bytes | memoryview) -> int | None:
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
            _reprocess_stale_embeddings(self.prime_tied_kernels)
        # Same invalidations as GPUModelRunner.reload_weights.
        runner.reset_lora_state()
        runner.reset_encoder_cache()
        runner.reset_mm_cache()
        expected = {name for name, _ in model.named_parameters()}
        return sorted(expected - self.prime_loaded_names)


def _tied_embedding_kernels(model: torch.nn.Module) -> list[tuple[torch.nn.Module, object]]:
    """Embedding modules that share their weight with another one (tied lm_head), each with
    its current CPU GEMM kernel (``cpu_linear``; None on GPUs, which keep no packed copy)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None and isinstance(getattr(module, "quant_method", None),
                                             UnquantizedEmbeddingMethod):
            owners.setdefault(weight.data_ptr(), []).append(module)
    return [(module, getattr(module, "cpu_linear", None))
            for modules in owners.values() if len(modules) > 1 for module in modules]


def _reprocess_stale_embeddings(kernels: list[tuple[torch.nn.Module, object]]) -> None:
    """Re-derive the kernel state of tied embeddings that the reload did not re-process.

    The loaders route a tied weight to the input embedding only (Qwen2 even drops
    ``lm_head.weight``), so the lm_head layer is never re-processed, while on CPU its
    processing built a packed GEMM copy of the weight: it would keep computing logits with
    the old weights. A module whose kernel is still the one from before the update is stale;
    re-packing only those saves one pack of the embedding (~0.1 s at 49k x 576). Unquantized
    embedding processing is idempotent (a no-op on GPUs).
    """
    for module, before in kernels:
        if getattr(module, "cpu_linear", None) is before:
            module.quant_method.process_weights_after_loading(module)
