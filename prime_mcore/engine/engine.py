"""The engine: one Megatron-Core model of one role, behind eight methods.

Roles: "policy" and "prm" are trainable (each with its own DDP grad buffers, optimizer and LR
schedule); "reference" is frozen (no DDP, no optimizer, ``requires_grad=False``, eval mode,
forward under ``no_grad``). All methods are collective: every rank of the world calls them
with the same arguments (the full global batch), whatever the TP x PP x DP layout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prime_mcore.config import ModelConfig, OptimConfig, ParallelConfig
from prime_mcore.engine import checkpoint as ckpt
from prime_mcore.engine.batching import MicroBatch, make_micro_batches, pad_rows
from prime_mcore.engine.cpu_compat import cuda_type_names
from prime_mcore.engine.logprobs import ResponsePositions, share_logprobs
from prime_mcore.engine.model import ModelChunks, build_model
from prime_mcore.engine.optimizer import build_optimizer, build_scheduler, wrap_ddp
from prime_mcore.engine.parallel import ParallelInfo, init_distributed
from prime_mcore.engine.schedule import run_schedule
from prime_mcore.engine.train_step import LossFn, make_head, reduce_metrics
from prime_mcore.engine.weights import iter_full_weights, load_full_weights

__all__ = ["Engine", "build_engine", "ROLES"]

ROLES = ("policy", "prm", "reference")


class Engine:
    """A policy, PRM or reference model on Megatron-Core (build with ``build_engine``)."""

    def __init__(self, *, role: str, model_config: ModelConfig, parallel: ParallelConfig,
                 info: ParallelInfo, chunks: ModelChunks, optim: OptimConfig | None,
                 total_steps: int | None) -> None:
        self.role = role
        self.info = info
        self._model_config = model_config
        self._chunks = chunks
        self._optimizer = None
        self._scheduler = None
        self._modules: list[torch.nn.Module] = chunks.modules
        if optim is None:
            for module in self._modules:
                module.requires_grad_(False)
                module.eval()
        else:
            self._modules = list(wrap_ddp(chunks.config, chunks.modules, parallel))
            self._optimizer = build_optimizer(optim, parallel, chunks.config, self._modules)
            self._scheduler = build_scheduler(optim, self._optimizer, total_steps)
        last = chunks.gpt[-1]
        self._positions = ResponsePositions(last.output_layer) if last.post_process else None
        self._length_multiple = math.lcm(
            info.tp if chunks.config.sequence_parallel else 1, 16 if chunks.config.fp8 else 1)

    @property
    def trainable(self) -> bool:
        """Whether this engine has an optimizer (policy, prm)."""
        return self._optimizer is not None

    def logprobs(self, batch: Mapping[str, Tensor], *, micro_batch_size: int,
                 temperature: float = 1.0) -> Tensor:
        """Log-probs [B, R] (fp32, 0 at padded response positions) of the response tokens.

        ``batch`` is the full global batch (see ``batching.py`` for the layout); the engine
        takes this DP rank's rows and returns the full result, identical on every rank, on
        the batch's device (a CPU batch gets CPU log-probs from a GPU engine, so the loop's
        algebra never mixes devices). ``micro_batch_size`` is global (split over DP); B need
        not be a multiple of it.
        """
        rows = batch["input_ids"].shape[0]
        multiple = micro_batch_size * (self.info.pp if self.info.vpp else 1)
        padded, _ = pad_rows(batch, multiple)
        micro, length = self._micro_batches(padded, micro_batch_size)

        def head(logp: Tensor, mb: MicroBatch,
                 entropy: Tensor | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
            return logp.sum(), torch.zeros((), dtype=torch.int, device=logp.device), {"logp": logp}

        for module in self._modules:
            module.eval()
        with torch.no_grad():
            kept = run_schedule(self._modules, micro, positions=self._positions,
                                seq_length=length, head=head, temperature=temperature,
                                vocab_size=self._chunks.vocab_size, forward_only=True)
        local = torch.cat([k["logp"] for k in kept]) if kept else None
        full = share_logprobs(local, rows=padded["input_ids"].shape[0],
                              width=batch["response_mask"].shape[1], device=self.info.device)
        return full[:rows].to(batch["response_mask"].device)

    def train_step(self, loss_fn: LossFn, batch: Mapping[str, Tensor], *, micro_batch_size: int,
                   normalizer: str, temperature: float = 1.0,
                   entropy: bool = False) -> dict[str, float]:
        """One optimizer step on the global mini-batch ``batch``.

        The gradient is that of ``sum(loss_sum) / D`` over the global batch, with D the number
        of response tokens (``normalizer="token"``) or of sequences (``"sequence"``); see
        ``train_step.py`` for the exact ``loss_fn`` contract. ``micro_batch_size`` is global
        (split over DP) and must divide B. Returns ``loss`` (sum / D), ``denominator`` (D),
        ``grad_norm`` (before clipping), ``lr`` and each ``loss_fn`` metric summed / D.
        ``entropy`` also passes ``loss_fn`` the per-token entropy (``entropy=`` keyword).
        """
        return self._train(loss_fn, batch, micro_batch_size=micro_batch_size,
                           normalizer=normalizer, temperature=temperature, keep_logp=False,
                           entropy=entropy)[0]

    def train_step_and_logprobs(self, loss_fn: LossFn, batch: Mapping[str, Tensor], *,
                                micro_batch_size: int, normalizer: str,
                                temperature: float = 1.0,
                                entropy: bool = False) -> tuple[dict[str, float], Tensor]:
        """``train_step`` that also returns the log-probs [B, R] its forward computed, i.e.
        with the weights BEFORE this step (identical on every rank and on the batch's
        device, like ``logprobs``).

        The PRM's single-forward update scores a mini-batch and trains on it; this gives the
        scores from the training forward instead of a second, no-grad forward.
        """
        metrics, logp = self._train(loss_fn, batch, micro_batch_size=micro_batch_size,
                                    normalizer=normalizer, temperature=temperature,
                                    keep_logp=True, entropy=entropy)
        assert logp is not None
        return metrics, logp

    def _train(self, loss_fn: LossFn, batch: Mapping[str, Tensor], *, micro_batch_size: int,
               normalizer: str, temperature: float, keep_logp: bool,
               entropy: bool) -> tuple[dict[str, float], Tensor | None]:
        if self._optimizer is None or self._scheduler is None:
            raise RuntimeError(f"the {self.role} engine is frozen: it has no optimizer")
        head = make_head(loss_fn, normalizer, keep_logp=keep_logp)
        micro, length = self._micro_batches(batch, micro_batch_size)
        if self.info.vpp and len(micro) % self.info.pp:
            raise ValueError(f"with parallel.vpp the {len(micro)} micro-batches per rank must be "
                             f"a multiple of pp={self.info.pp}")
        for module in self._modules:
            module.train()
            module.zero_grad_buffer()
        self._optimizer.zero_grad()
        # Advance first: optimizer step n runs at the schedule's lr(n) (see optimizer.py).
        self._scheduler.step(1)
        kept = run_schedule(self._modules, micro, positions=self._positions,
                            seq_length=length, head=head, temperature=temperature,
                            vocab_size=self._chunks.vocab_size, forward_only=False,
                            entropy=entropy)
        with cuda_type_names():
            if self._optimizer.config.clip_grad > 0:
                _, grad_norm, _ = self._optimizer.step()
            else:
                grad_norm = self._optimizer.get_grad_norm()
                self._optimizer.step()
        metrics = reduce_metrics(kept, device=self.info.device)
        lr = self._optimizer.param_groups[0]["lr"]
        logp = None
        if keep_logp:
            local = torch.cat([k["_logp"] for k in kept]) if kept else None
            logp = share_logprobs(local, rows=batch["input_ids"].shape[0],
                                  width=batch["response_mask"].shape[1],
                                  device=self.info.device).to(batch["response_mask"].device)
        return {**metrics, "grad_norm": float(grad_norm), "lr": float(lr)}, logp

    def save(self, path: str | Path, *, step: int, user_data: dict[str, Any] | None = None) -> None:
        """Atomically write a checkpoint of model, optimizer, schedule and RNG to ``path``."""
        ckpt.save_checkpoint(Path(path), info=self.info, chunks=self._chunks.gpt,
                             optimizer=self._optimizer, scheduler=self._scheduler, step=step,
                             user_data=dict(user_data or {}), model_info=self._model_info())

    def load(self, path: str | Path, *, weights_only: bool = False) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint written at any layout; returns (step, user_data).

        ``weights_only`` loads only the model (e.g. initialising RL from an SFT checkpoint);
        otherwise the optimizer state, LR schedule and (same layout only) RNG are restored too.
        Raises ``CheckpointError`` naming the missing or corrupt file.
        """
        return ckpt.load_checkpoint(Path(path), info=self.info, chunks=self._chunks.gpt,
                                    optimizer=self._optimizer, scheduler=self._scheduler,
                                    weights_only=weights_only, model_info=self._model_info())

    def export_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Yield every full (TP-gathered, all stages, unpadded vocab) weight on every rank, one
        at a time, by canonical mcore name (``weights.py``). Collective: consume it fully."""
        return iter_full_weights(self._chunks.gpt, tied=self._model_config.tie_word_embeddings,
                                 vocab_size=self._chunks.vocab_size)

    def load_state(self, named: Iterable[tuple[str, Tensor]]) -> None:
        """Set all weights from full tensors by canonical name (every rank gets the stream)."""
        load_full_weights(self._chunks.gpt, named, tied=self._model_config.tie_word_embeddings,
                          padded_vocab=self._chunks.padded_vocab)
        if self._optimizer is not None:
            self._optimizer.reload_model_params()

    def _micro_batches(self, batch: Mapping[str, Tensor],
                       micro_batch_size: int) -> tuple[list[MicroBatch], int]:
        return make_micro_batches(batch, dp=self.info.dp, dp_rank=self.info.dp_rank,
                                  micro_batch_size=micro_batch_size,
                                  length_multiple=self._length_multiple, device=self.info.device)

    def _model_info(self) -> dict[str, Any]:
        cfg = self._model_config
        return {"arch": cfg.arch, "vocab_size": cfg.vocab_size, "num_layers": cfg.num_layers,
                "hidden_size": cfg.hidden_size, "padded_vocab": self._chunks.padded_vocab}


def build_engine(model: ModelConfig, parallel: ParallelConfig, optim: OptimConfig | None, *,
                 role: str, seed: int, total_steps: int | None = None) -> Engine:
    """Build one role's engine (initialises torch.distributed and Megatron if needed).

    Args:
        model: architecture; random init from ``seed`` (load weights with ``load``/``load_state``).
        parallel: TP/PP/VPP layout, identical for all engines of a process.
        optim: required for "policy" and "prm", must be None for "reference".
        role: "policy", "prm" or "reference".
        seed: seeds all RNGs before the init (same seed => same weights at any TP size on CPU).
        total_steps: optimizer steps of the run; required by the cosine schedule.
    """
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not one of {list(ROLES)}")
    if (role == "reference") != (optim is None):
        raise ValueError(f"role={role!r}: {'no' if role == 'reference' else 'an'} OptimConfig is "
                         f"expected, got {optim!r}")
    info = init_distributed(parallel, seed=seed)
    chunks = build_model(model, parallel, device=info.device)
    return Engine(role=role, model_config=model, parallel=parallel, info=info, chunks=chunks,
                  optim=optim, total_steps=total_steps)
