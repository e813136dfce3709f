"""Logprob-gap monitor, run every RL step: does the rollout engine still sample from the
policy the trainer holds?

Compares, on the sampled tokens, the logprobs the rollout engine reported with the ones the
trainer recomputes (old log-probs). A small gap is numerics (bf16, kernels); a large one
means a missed or partial weight sync, a stale prefix cache, or a temperature mismatch.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch

from prime_mcore.algo import kl_k3

log = logging.getLogger(__name__)


class LogprobGapWarning(RuntimeWarning):
    """The mean rollout/trainer logprob gap exceeded the configured threshold."""


class LogprobGapMonitor:
    """``check`` returns metrics, warns above ``warn_threshold`` and raises on NaN/inf."""

    def __init__(self, warn_threshold: float = 0.05) -> None:
        """``warn_threshold``: mean |rollout - trainer| logprob gap (nats) that warns
        (``RolloutConfig.logprob_gap_warn``)."""
        if not warn_threshold > 0:
            raise ValueError(f"warn_threshold={warn_threshold} must be > 0")
        self.warn_threshold = warn_threshold

    def check(self, rollout_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor,
              mask: torch.Tensor, weights_checksum: int | float | None = None) -> dict[str, float]:
        """Gap statistics over the tokens where ``mask`` is true ([B, L] tensors).

        Returns ``rollout/logprob_gap_mean``, ``rollout/logprob_gap_max``,
        ``rollout/kl_k3`` (k3 estimate of KL(rollout || trainer): the tokens were sampled
        by the rollout engine), ``rollout/gap_tokens``, ``rollout/gap_warn`` (0/1) and,
        when given, ``rollout/weights_checksum`` of the last sync.
        Raises ``FloatingPointError`` if a masked logprob is NaN or infinite.
        """
        if not rollout_logprobs.shape == trainer_logprobs.shape == mask.shape:
            raise ValueError(f"shapes differ: rollout {tuple(rollout_logprobs.shape)}, "
                             f"trainer {tuple(trainer_logprobs.shape)}, mask {tuple(mask.shape)}")
        mask = mask.bool()
        rollout = rollout_logprobs.detach().double()
        trainer = trainer_logprobs.detach().to(rollout.device).double()
        mask = mask.to(rollout.device)
        for name, values in (("rollout", rollout), ("trainer", trainer)):
            bad = mask & ~torch.isfinite(values)
            if bad.any():
                first = tuple(int(i) for i in bad.nonzero()[0])
                raise FloatingPointError(f"{name} logprobs are not finite at {int(bad.sum())} "
                                         f"sampled tokens (first at {first})")
        count = int(mask.sum())
        metrics: dict[str, float] = {"rollout/gap_tokens": float(count)}
        if count == 0:
            metrics.update({"rollout/logprob_gap_mean": 0.0, "rollout/logprob_gap_max": 0.0,
                            "rollout/kl_k3": 0.0, "rollout/gap_warn": 0.0})
        else:
            gap = (rollout - trainer).abs()[mask]
            kl = kl_k3(rollout, trainer, mask)[mask]
            metrics.update({"rollout/logprob_gap_mean": float(gap.mean()),
                            "rollout/logprob_gap_max": float(gap.max()),
                            "rollout/kl_k3": float(kl.mean())})
            warn = metrics["rollout/logprob_gap_mean"] > self.warn_threshold
            metrics["rollout/gap_warn"] = float(warn)
            if warn:
                mean, top = metrics["rollout/logprob_gap_mean"], metrics["rollout/logprob_gap_max"]
                msg = (f"rollout/trainer logprob gap: mean {mean:.4g} > {self.warn_threshold:g}"
                       f" nats (max {top:.4g}, k3 KL {metrics['rollout/kl_k3']:.4g}): "
                       "weight sync or prefix cache stale?")
                log.warning(msg)
                warnings.warn(msg, LogprobGapWarning, stacklevel=2)
        if weights_checksum is not None:
            if not math.isfinite(weights_checksum):
                raise FloatingPointError(f"synced weights checksum is {weights_checksum}")
            metrics["rollout/weights_checksum"] = float(weights_checksum)
        return metrics
