"""Megatron-Core GPT models from our primitive ``ModelConfig`` (Qwen2/Qwen2.5 and Llama).

Both families are pre-norm decoders with RMSNorm, SwiGLU, rotary embeddings (base
``rope_theta``, non-interleaved halves as in HF) and grouped-query attention; Qwen2 adds a
bias on the QKV projection. The embedding is padded to a multiple of
``make_vocab_size_divisible_by * tp`` rows (Megatron convention); logprobs mask the padding.

Transformer implementation: the local (pure torch) spec, with PyTorch's fused attention, on
CPU; Transformer Engine on CUDA when installed (``transformer_impl="auto"``). FP8 needs TE
on CUDA and fails here, at build time, with a config error otherwise.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as mpu
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from prime_mcore.config import ModelConfig, ParallelConfig
from prime_mcore.engine.attention import SDPAttention

__all__ = ["ModelChunks", "build_model", "padded_vocab_size", "resolve_impl",
           "transformer_config", "te_available"]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Rows of the (padded) embedding: the next multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def te_available() -> bool:
    """Transformer Engine usable: installed with its torch extension and a CUDA device."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, RuntimeError):  # an empty TE meta package raises RuntimeError
        return False
    return True


def resolve_impl(model: ModelConfig, parallel: ParallelConfig) -> str:
    """"local" or "transformer_engine"; raises ValueError for combinations that cannot run."""
    have_te = te_available()
    impl = model.transformer_impl
    if impl == "auto":
        impl = "transformer_engine" if have_te else "local"
    if impl == "transformer_engine" and not have_te:
        raise ValueError("model.transformer_impl='transformer_engine' needs CUDA and an installed "
                         "transformer-engine[pytorch]; use 'auto' or 'local'")
    if model.fp8 is not None and impl != "transformer_engine":
        raise ValueError(f"model.fp8={model.fp8!r} needs Transformer Engine on CUDA (found: "
                         f"cuda={torch.cuda.is_available()}, te={have_te}, impl={impl!r}); "
                         "set model.fp8=null")
    if parallel.sequence_parallel and impl != "transformer_engine" and parallel.tp > 1:
        raise ValueError("parallel.sequence_parallel needs Transformer Engine norms (GPU); the "
                         "local spec's torch RMSNorm does not support it")
    return impl


def transformer_config(model: ModelConfig, parallel: ParallelConfig, *,
                       impl: str) -> TransformerConfig:
    """Megatron's TransformerConfig for one of our models."""
    dtype = _DTYPES[model.params_dtype]
    recompute = {} if model.recompute is None else {"recompute_granularity": model.recompute}
    if model.recompute == "full":
        recompute.update(recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.kv_channels,
        layernorm_epsilon=model.norm_eps,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=model.qkv_bias,
        # Qwen2/Llama train without dropout; it would also break layout-equality tests.
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=parallel.vpp,
        sequence_parallel=parallel.sequence_parallel and parallel.tp > 1,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        # CPU init is bit-identical across TP sizes for one seed; GPU init is fast.
        use_cpu_initialization=not torch.cuda.is_available(),
        # Loss normalisation is ours (train_step.py): the schedule must not divide by the
        # number of micro-batches and DDP must sum (not average) gradients over DP.
        calculate_per_token_loss=True,
        fp8=model.fp8,
        fp8_recipe=model.fp8_recipe if model.fp8 is not None else "delayed",
        **recompute,
    )


def _layer_spec(impl: str) -> ModuleSpec:
    if impl == "transformer_engine":
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=False)
    # PyTorch's fused attention instead of Megatron's unfused one (see attention.py).
    spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


@dataclass
class ModelChunks:
    """The model of this rank: one chunk per virtual pipeline stage (one without VPP).

    ``modules`` are what the pipeline schedule runs (possibly wrapped for bf16 and DDP later);
    ``gpt`` are the bare ``GPTModel`` chunks, for state dicts and weight I/O.
    """

    config: TransformerConfig
    modules: list[torch.nn.Module]
    gpt: list[GPTModel]
    padded_vocab: int
    vocab_size: int
    impl: str


def build_model(model: ModelConfig, parallel: ParallelConfig, *,
                device: torch.device) -> ModelChunks:
    """Build this rank's chunks (TP/PP groups must be initialised; init uses the current RNG)."""
    impl = resolve_impl(model, parallel)
    config = transformer_config(model, parallel, impl=impl)
    padded = padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, parallel.tp)
    spec = _layer_spec(impl)
    stages = [None] if parallel.vpp is None else list(range(parallel.vpp))
    gpt_chunks: list[GPTModel] = []
    for vp_stage in stages:
        first = mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        last = mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        chunk = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=padded,
            max_sequence_length=model.max_position_embeddings,
            pre_process=first,
            post_process=last,
            parallel_output=True,  # keep logits vocab-parallel: logprobs never gather them
            share_embeddings_and_output_weights=model.tie_word_embeddings,
            position_embedding_type="rope",
            rotary_base=model.rope_theta,  # type: ignore[arg-type]  (a float base is fine)
            vp_stage=vp_stage,
        )
        gpt_chunks.append(chunk.to(device))
    modules: list[torch.nn.Module] = list(gpt_chunks)
    if config.bf16:
        # Casts the chunk to bf16 and the last stage's logits back to fp32 (Megatron-LM's way).
        modules = [Float16Module(config, chunk) for chunk in gpt_chunks]
    return ModelChunks(config=config, modules=modules, gpt=gpt_chunks, padded_vocab=padded,
                       vocab_size=model.vocab_size, impl=impl)
