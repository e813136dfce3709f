"""The PRIME RL loop (PAPER Alg. 1; spec 1 and 13). ``algo=rloo`` runs the outcome-only
RLOO baseline through the same loop with ``OutcomeOnly`` in place of the PRM update.

One step:
  rollout (sample prompts, generate K each, verify, accuracy filter with refill)
  -> old log-probs (policy) -> PRM + reference log-probs, PRM CE update, process rewards
  -> RLOO advantages -> PPO policy update -> weight sync to the rollout engine
  -> metrics, eval, checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from prime_mcore import algo
from prime_mcore.data.batching import pad_rollouts
from prime_mcore.trainers.collector import Collected, PromptSource, RolloutCollector
from prime_mcore.trainers.common import broadcast, is_rank0
from prime_mcore.trainers.metrics import MetricsWriter, PhaseTimer

log = logging.getLogger("prime_mcore")


@dataclass
class Loop:
    """Everything one step calls, built by ``build.build_rl``."""

    policy: object
    prm_update: object
    collector: RolloutCollector | None
    source: PromptSource
    sync: object
    evaluate: object
    checkpoints: object
    engines: dict
    pad_id: int
    eos_id: int
    group_size: int
    convention: str
    rm_coef: float | None
    gt_coef: float | None
    monitor: object
    seed: int
    prompt_ids: object
    close: object
    """example index -> chat-templated prompt token ids (every rank)."""


class PrimeTrainer:
    """Runs ``max_steps`` PRIME (or RLOO) steps with metrics, eval and checkpoints."""

    def __init__(self, loop: Loop, *, run_dir: Path, max_steps: int, save_every: int,
                 eval_every: int, resume: bool) -> None:
        self.loop, self.run_dir = loop, run_dir
        self.max_steps, self.save_every, self.eval_every = max_steps, save_every, eval_every
        self.resume = resume
        self.timer = PhaseTimer()
        self.writer = MetricsWriter(run_dir, enabled=is_rank0())

    def run(self) -> dict[str, float]:
        start = self._maybe_resume()
        metrics: dict[str, float] = {}
        bar = tqdm(range(start + 1, self.max_steps + 1), desc="PRIME", disable=not is_rank0(),
                   initial=start, total=self.max_steps)
        for step in bar:
            metrics = self.step(step)
            if step % self.eval_every == 0 or step == self.max_steps:
                with self.timer("eval"):
                    metrics.update(self.loop.evaluate())
            if step % self.save_every == 0 or step == self.max_steps:
                with self.timer("checkpoint"):
                    self.loop.checkpoints.save(step, self.loop.engines, self._state())
            metrics.update(self.timer.pop())
            self.writer.log(step, metrics)
            bar.set_postfix(acc=f"{metrics.get('train/accuracy', 0):.3f}")
        self.writer.close()
        return metrics

    def step(self, step: int) -> dict[str, float]:
        t, lp = self.timer, self.loop
        with t("rollout"):
            collected = broadcast(lp.collector.collect(step, lp.seed) if is_rank0() else None)
            lp.source.load_state_dict(broadcast(lp.source.state_dict()))
            batch = self.to_batch(collected)
        with t("old_logprobs"):  # None: the single policy update's own forward gives them
            old = lp.policy.old_logprobs(batch, needed_now=lp.prm_update.needs_old_logprobs)
            if old is not None:
                batch["logp_old"] = old
        with t("prm"):
            rm_scores, prm_metrics = lp.prm_update(batch)
        with t("advantages"):
            batch["advantages"], returns = algo.rloo_advantages(
                rm_scores, batch["scores"], batch["response_mask"], group_size=lp.group_size,
                convention=lp.convention, rm_coef=lp.rm_coef, gt_coef=lp.gt_coef)
        with t("policy_update"):
            policy_metrics = lp.policy.update(batch, seed=lp.seed * 7919 + step)
        with t("weight_sync"):
            sync_metrics = lp.sync()
        return {**collected.metrics, **prm_metrics, **policy_metrics, **sync_metrics,
                **self.batch_metrics(batch, returns)}

    def to_batch(self, c: Collected) -> dict[str, torch.Tensor]:
        lp = self.loop
        prompts = [lp.prompt_ids(i) for i in c.prompt_indices for _ in range(lp.group_size)]
        rb = pad_rollouts(prompts, [s.token_ids for s in c.samples], lp.pad_id, eos_id=lp.eos_id)
        rollout_logp = torch.zeros(rb.response_mask.shape, dtype=torch.float32)
        for row, s in enumerate(c.samples):
            rollout_logp[row, : len(s.logprobs)] = torch.tensor(s.logprobs)
        return {"input_ids": rb.input_ids, "attention_mask": rb.attention_mask,
                "response_mask": rb.response_mask, "scores": c.scores,
                "rollout_logp": rollout_logp}

    def batch_metrics(self, batch: dict[str, torch.Tensor], returns: torch.Tensor) -> dict:
        mask = batch["response_mask"].bool()
        lengths = mask.sum(-1).float()
        out = {
            "train/accuracy_kept": float(batch["scores"].mean()),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "advantages/mean": float(algo.masked_mean(batch["advantages"], mask)),
            "advantages/max": float(batch["advantages"][mask].max()),
            "advantages/min": float(batch["advantages"][mask].min()),
            "returns/mean": float(algo.masked_mean(returns, mask)),
            "returns/max": float(returns[mask].max()),
            "returns/min": float(returns[mask].min()),
        }
        out.update(self.loop.monitor.check(batch["rollout_logp"], batch["logp_old"], mask,
                                           weights_checksum=None))
        return out

    @property
    def is_writer(self) -> bool:
        return is_rank0()

    def close(self) -> None:
        self.loop.close()

    def _state(self) -> dict:
        return {"source": self.loop.source.state_dict()}

    def _maybe_resume(self) -> int:
        latest = self.loop.checkpoints.latest() if self.resume else None
        if latest is None:
            return 0
        step, state = self.loop.checkpoints.load(latest, self.loop.engines)
        self.loop.source.load_state_dict(state["source"])
        self.loop.sync()
        self.writer.truncate_after(step)
        log.info("resumed from %s (step %d)", latest, step)
        return step
