"""Megatron DDP + optimizer + LR schedule for a trainable role, and the resume fixes.

Schedules (``OptimConfig.lr_schedule``): optimizer step n (1-based) uses
``lr * n / warmup_steps`` while ``n <= warmup_steps``, then ``lr`` ("constant") or a cosine
from ``lr`` at ``warmup_steps`` to ``min_lr`` at ``total_steps`` ("cosine"). Unlike
Megatron-LM, the first warm-up step does not run at lr 0 (the scheduler advances before the
step, see ``train_step.py``).

Without Apex/Transformer Engine (always on CPU), Megatron's optimizers run on
``torch.optim.AdamW`` and three of the DistributedOptimizer checkpoint paths need a fix
(notes/mcore_cpu.md, experiment 6). ``prepare_optimizer_state`` and ``after_optimizer_load``
apply them; they are no-ops for TE/Apex FusedAdam, whose code paths differ. A fourth fix,
for every DistributedOptimizer, repairs the ``fully_reshardable`` save of buffers with more
than one bucket (``_align_world_tensors``).
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    finalize_model_grads,
)
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.transformer_config import TransformerConfig

from prime_mcore.config import OptimConfig, ParallelConfig
from prime_mcore.engine.cpu_compat import cuda_type_names

__all__ = ["wrap_ddp", "build_optimizer", "build_scheduler", "prepare_optimizer_state",
           "after_optimizer_load", "inner_optimizers"]


def wrap_ddp(config: TransformerConfig, modules: list[torch.nn.Module],
             parallel: ParallelConfig) -> list[DistributedDataParallel]:
    """Wrap each chunk in Megatron DDP (contiguous fp32 grad buffers, DP reduction)."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
        # Sum over DP; train_step.py divides by the global denominator (see its docstring).
        average_in_collective=False,
    )
    ddp = [DistributedDataParallel(config, ddp_config, module, disable_bucketing=i > 0)
           for i, module in enumerate(modules)]
    config.no_sync_func = ddp[0].no_sync if len(ddp) == 1 else [m.no_sync for m in ddp]
    config.finalize_model_grads_func = finalize_model_grads
    return ddp


def build_optimizer(optim: OptimConfig, parallel: ParallelConfig, config: TransformerConfig,
                    ddp: list[DistributedDataParallel]) -> MegatronOptimizer:
    """AdamW with decoupled weight decay (not on biases and norms), global-norm clipping."""
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=config.bf16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=parallel.use_distributed_optimizer,
    )
    with cuda_type_names():
        return get_megatron_optimizer(opt_config, ddp)


def build_scheduler(optim: OptimConfig, optimizer: MegatronOptimizer,
                    total_steps: int | None) -> OptimizerParamScheduler:
    """LR schedule of the module docstring (weight decay stays constant)."""
    warmup = optim.warmup_steps
    if optim.lr_schedule == "cosine":
        if total_steps is None or total_steps <= warmup:
            raise ValueError(f"optim.lr_schedule='cosine' needs total_steps > optim.warmup_steps="
                             f"{warmup}, got total_steps={total_steps}")
        decay_steps = total_steps
    else:
        decay_steps = max(total_steps or 0, warmup + 1)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else optim.lr,
        max_lr=optim.lr,
        min_lr=optim.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=decay_steps,
        lr_decay_style=optim.lr_schedule,
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )


def inner_optimizers(optimizer: MegatronOptimizer) -> list[MegatronOptimizer]:
    """The Megatron optimizers inside a ChainedOptimizer (or the optimizer itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _torch_adam(opt: MegatronOptimizer) -> torch.optim.Optimizer | None:
    inner = getattr(opt, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Adam | torch.optim.AdamW) else None


def prepare_optimizer_state(optimizer: MegatronOptimizer) -> None:
    """Fixes 1 and 2, needed before ``sharded_state_dict`` for a save or a load."""
    for opt in inner_optimizers(optimizer):
        adam = _torch_adam(opt)
        if adam is None:
            continue
        # Fix 1: torch Adam creates per-param state lazily at its first step, but
        # DistributedOptimizer.state_dict() asserts exactly one 'step' value
        # (`assert len(steps) == 1`). Zero state is what Adam would create itself, so a
        # fresh optimizer behaves identically and can be saved or loaded into.
        for group in adam.param_groups:
            for param in group["params"]:
                if not adam.state[param]:
                    adam.state[param] = {
                        "step": torch.tensor(0.0),
                        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
                    }
        if isinstance(opt, DistributedOptimizer) and not getattr(opt, "_prime_step_fix", False):
            _pass_step_through(opt)
    for opt in inner_optimizers(optimizer):
        if isinstance(opt, DistributedOptimizer) and not getattr(opt, "_prime_align_fix", False):
            _align_world_tensors(opt)


def _pass_step_through(opt: DistributedOptimizer) -> None:
    # Fix 2: the fully_reshardable load copies every key of the live per-param state from the
    # checkpoint tensors, but checkpoints hold no per-param 'step' (it lives in the param
    # groups) -> KeyError: 'step'. Keep the live step (already restored from the groups).
    orig = opt._set_main_param_and_optimizer_states

    def set_states(model_param: torch.nn.Parameter, tensors: dict[str, torch.Tensor]) -> None:
        if "step" not in tensors:
            index, order = opt.model_param_group_index_map[model_param]
            main_param = opt.optimizer.param_groups[index]["params"][order]
            tensors = {**tensors, "step": opt.optimizer.state[main_param]["step"]}
        orig(model_param, tensors)

    opt._set_main_param_and_optimizer_states = set_states  # type: ignore[method-assign]
    opt._prime_step_fix = True  # type: ignore[attr-defined]


def _align_world_tensors(opt: DistributedOptimizer) -> None:
    # Fix 4 (silent corruption, mcore 0.16.1; upstream "TODO ... see issue #504"): the
    # fully_reshardable save slices the DP-gathered "world" state tensors with each param's
    # buffer index, but get_parameter_state_dp_zero() packs the buckets without the padding
    # between them. With several buckets (the shared embedding gets its own one at PP > 1
    # with tied weights; more with overlap_grad_reduce) every param after the first bucket
    # reads the wrong slice, e.g. Adam moments of the tied embedding saved at TP2 x PP2 came
    # back shifted (logged as "param range exceeds unpadded buffer ... padded with zeros").
    # Re-insert the gaps so world offsets equal buffer offsets; skipped if the layout differs.
    orig = opt.get_parameter_state_dp_zero

    def get_state(*args: Any, **kwargs: Any) -> dict | None:
        state = orig(*args, **kwargs)
        if state is None:
            return None
        for gbuf_idx, buffer in enumerate(opt.buffers):
            for tensors in state[gbuf_idx].values():
                for key in ("param", "exp_avg", "exp_avg_sq"):
                    if key in tensors:
                        tensors[key] = _with_bucket_gaps(tensors[key], buffer)
        return state

    opt.get_parameter_state_dp_zero = get_state  # type: ignore[method-assign]
    opt._prime_align_fix = True  # type: ignore[attr-defined]


def _with_bucket_gaps(packed: torch.Tensor, buffer: Any) -> torch.Tensor:
    """Spread a tensor of the buckets' unpadded elements to the buffer's bucket offsets."""
    buckets = buffer.buckets
    if len(buckets) == 1 or packed.numel() != sum(b.numel_unpadded for b in buckets):
        return packed
    spread = packed.new_zeros(buckets[-1].offset + buckets[-1].numel_unpadded)
    start = 0
    for bucket in buckets:
        spread[bucket.offset:bucket.offset + bucket.numel_unpadded] = (
            packed[start:start + bucket.numel_unpadded])
        start += bucket.numel_unpadded
    return spread


def after_optimizer_load(optimizer: MegatronOptimizer) -> None:
    """Fix 3, right after ``load_state_dict``."""
    for opt in inner_optimizers(optimizer):
        adam = _torch_adam(opt)
        if adam is None:
            continue
        # Fix 3 (silent): without Apex, DistributedOptimizer.load_state_dict assigns ONE
        # shared 'step' tensor to every param and torch Adam increments it in place once per
        # param, so bias correction drifts after a resume. Give each param its own copy.
        for state in adam.state.values():
            if "step" in state:
                state["step"] = state["step"].detach().clone()
