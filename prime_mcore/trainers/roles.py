"""The three roles of PRIME over the engine: the policy, the implicit PRM and its reference.

PRM update variants (spec 3.3) are separate objects chosen at construction, never flags
inside the loop:
- ``PRMAfter`` (single forward, the paper's default): mini-batch k is scored by the PRM
  after k-1 of this step's updates, then trained; its rewards are those scores, taken from
  the training forward itself (no separate scoring forward).
- ``PRMBefore`` (double forward): train on all mini-batches, then score with a fresh forward.
- ``PRMFrozen`` ("none"): score only (the offline-PRM ablation).
- ``OutcomeOnly``: no PRM at all, the outcome-only RLOO baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from prime_mcore import algo
from prime_mcore.trainers.metrics import PhaseTimer

Batch = Mapping[str, Tensor]


def slice_rows(batch: Batch, rows: slice | Tensor) -> dict[str, Tensor]:
    return {k: v[rows] for k, v in batch.items()}


def _mean(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]} if dicts else {}


class Policy:
    """The policy: recomputes old log-probs and takes PPO steps on mini-batches.

    Optional regularisers (both 0 in the paper's run, spec 5.1), aggregated like the PPO
    loss: ``entropy_coef`` subtracts coef * entropy of the next-token distributions (veRL's
    prime config: 0.001); ``kl_coef`` adds coef * KL(pi || ref) per token, with the k3
    ("low_var_kl") estimator clamped at 10, against ``reference`` (the frozen initial
    policy) at the rollout temperature. ``reuse_prm_reference``: the PRM's reference
    log-probs (``batch["logp_ref"]``) are exactly those (frozen SFT weights, T = 1), so no
    second reference forward runs.
    """

    def __init__(self, engine, *, temperature: float, mini_batch_size: int,
                 micro_batch_size: int, clip_eps: float, dual_clip: float | None, agg: str,
                 ppo_epochs: int, shuffle: bool, entropy_coef: float = 0.0,
                 kl_coef: float = 0.0, reference=None, reuse_prm_reference: bool = False) -> None:
        if kl_coef > 0 and reference is None and not reuse_prm_reference:
            raise ValueError("kl_coef > 0 needs a reference engine")
        self.engine, self.temperature = engine, temperature
        self.mini, self.micro = mini_batch_size, micro_batch_size
        self.clip_eps, self.dual_clip, self.agg = clip_eps, dual_clip, agg
        self.epochs, self.shuffle = ppo_epochs, shuffle
        self.entropy_coef, self.kl_coef = entropy_coef, kl_coef
        self.reference, self.reuse_prm_reference = reference, reuse_prm_reference

    def logprobs(self, batch: Batch) -> Tensor:
        return self.engine.logprobs(batch, micro_batch_size=self.micro,
                                    temperature=self.temperature)

    def single_update(self, rows: int) -> bool:
        """Whether the step is one optimizer step on all ``rows`` (one epoch, one
        mini-batch): its training forward then runs at the rollout weights, so it gives
        the old log-probs itself and a separate forward for them would be redundant."""
        return self.epochs == 1 and self.mini >= rows

    def old_logprobs(self, batch: Batch, *, needed_now: bool) -> Tensor | None:
        """log pi_old, or None when ``update`` will take them from its own forward
        (``single_update``) and nothing needs them before (``needed_now``)."""
        if not needed_now and self.single_update(batch["input_ids"].shape[0]):
            return None
        return self.logprobs(batch)

    def kl_reference_logprobs(self, batch: Batch) -> Tensor:
        """log pi_ref of the responses at the rollout temperature, for the KL loss."""
        if self.reuse_prm_reference:
            return batch["logp_ref"]
        return self.reference.logprobs(batch, micro_batch_size=self.micro,
                                       temperature=self.temperature)

    def _loss_fn(self, logp: Tensor, mb: dict[str, Tensor], entropy: Tensor | None = None):
        mask = mb["response_mask"].bool()
        # without precomputed old log-probs this is the single update: old = this forward
        old = mb["logp_old"] if "logp_old" in mb else logp.detach()
        loss, m = algo.ppo_policy_loss(logp, old, mb["advantages"], mask,
                                       clip_eps=self.clip_eps, dual_clip=self.dual_clip,
                                       agg=self.agg)
        if entropy is not None:
            mean_entropy = algo.aggregate(entropy, mask, self.agg)
            loss = loss - self.entropy_coef * mean_entropy
            m["entropy"] = float(mean_entropy.detach())
        if self.kl_coef > 0:
            kl = algo.aggregate(algo.kl_k3(logp, mb["logp_kl_ref"], mask).clamp(max=10.0),
                                mask, self.agg)
            loss = loss + self.kl_coef * kl
            m["kl_loss"] = float(kl.detach())
        # the engine divides sums by the global token (or sequence) count: undo the mean here
        count = mask.sum() if self.agg == "token-mean" else mask.any(-1).sum()
        metrics = {f"policy/{k}": v * count for k, v in m.items()}
        return loss * count, metrics

    def update(self, batch: dict[str, Tensor], *, seed: int) -> dict[str, float]:
        """PPO epochs over shuffled mini-batches of rows (advantages are already final).
        Without ``batch["logp_old"]`` (see ``old_logprobs``) it fills them in from the
        single update's forward."""
        rows = batch["input_ids"].shape[0]
        normalizer = "token" if self.agg == "token-mean" else "sequence"
        kw = dict(micro_batch_size=self.micro, normalizer=normalizer,
                  temperature=self.temperature, entropy=self.entropy_coef > 0)
        if self.kl_coef > 0:
            batch["logp_kl_ref"] = self.kl_reference_logprobs(batch)
        results = []
        gen = torch.Generator().manual_seed(seed)
        for _ in range(self.epochs):
            order = torch.randperm(rows, generator=gen) if self.shuffle else torch.arange(rows)
            for start in range(0, rows, self.mini):
                rows_mb = order[start:start + self.mini]
                mb = slice_rows(batch, rows_mb)
                if "logp_old" in batch:
                    results.append(self.engine.train_step(self._loss_fn, mb, **kw))
                    continue
                if not self.single_update(rows):  # a ratio of 1 would silently drop clipping
                    raise ValueError("batch has no logp_old: only a single-step update "
                                     "(ppo_epochs=1, one mini-batch) computes its own")
                metrics, logp = self.engine.train_step_and_logprobs(self._loss_fn, mb, **kw)
                batch["logp_old"] = torch.empty_like(logp).index_copy_(
                    0, rows_mb.to(logp.device), logp)
                results.append(metrics)
        out = _mean(results)
        return {("policy/" + k if not k.startswith("policy/") else k): v for k, v in out.items()}


class ImplicitPRM:
    """pi_prm next to a frozen pi_ref; rewards r_t = beta log(pi_prm / pi_ref) (spec 2-3)."""

    def __init__(self, engine, reference, *, beta: float, convention: str, granularity: str,
                 norm: str, norm_scope: str, dp_size: int, group_size: int,
                 mini_batch_size: int, micro_batch_size: int,
                 use_policy_as_ref: bool = False, norm_floor: float = 0.0) -> None:
        self.engine, self.reference = engine, reference
        self.norm_floor = norm_floor
        self.beta, self.convention, self.granularity = beta, convention, granularity
        self.norm, self.norm_scope, self.dp = norm, norm_scope, dp_size
        self.group_size = group_size
        self.mini, self.micro = mini_batch_size, micro_batch_size
        self.use_policy_as_ref = use_policy_as_ref
        self.timer = PhaseTimer()  # sub-phases of the loop's "prm" phase, reported per step

    def ref_logprobs(self, batch: Batch) -> Tensor:
        if self.use_policy_as_ref:  # ref_type "policy": old policy log-probs are the reference
            return batch["logp_old"]
        with self.timer("prm/ref_forward"):
            return self.reference.logprobs(batch, micro_batch_size=self.micro)

    def logprobs(self, batch: Batch) -> Tensor:
        with self.timer("prm/forward"):
            return self.engine.logprobs(batch, micro_batch_size=self.micro)

    def _loss_fn(self, logp: Tensor, mb: dict[str, Tensor]):
        loss = algo.prm_ce_loss(logp, mb["logp_ref"], mb["response_mask"], mb["scores"],
                                beta=self.beta)
        return loss * logp.shape[0], {}  # BCE mean over responses -> sum; engine divides by B

    def train_minibatch(self, mb: Batch) -> dict[str, float]:
        with self.timer("prm/update"):
            m = self.engine.train_step(self._loss_fn, mb, micro_batch_size=self.micro,
                                       normalizer="sequence", temperature=1.0)
        return self._metrics(m)

    def score_and_train(self, mb: Batch) -> tuple[Tensor, dict[str, float]]:
        """log pi_prm of ``mb`` before this update (from the training forward), then train."""
        with self.timer("prm/update"):
            m, logp = self.engine.train_step_and_logprobs(
                self._loss_fn, mb, micro_batch_size=self.micro, normalizer="sequence",
                temperature=1.0)
        return logp, self._metrics(m)

    @staticmethod
    def _metrics(m: dict[str, float]) -> dict[str, float]:
        return {"prm/ce_loss": m["loss"], "prm/grad_norm": m["grad_norm"], "prm/lr": m["lr"]}

    def minibatches(self, rows: int) -> list[slice]:
        return [slice(s, s + self.mini) for s in range(0, rows, self.mini)]

    def rewards(self, logp_prm: Tensor, logp_ref: Tensor, mask: Tensor) -> Tensor:
        """rm_scores with batch_norm over each DP rank's shard ("rank") or the batch."""
        kw = dict(beta=self.beta, convention=self.convention, granularity=self.granularity,
                  norm_floor=self.norm_floor)
        if self.norm != "batch_norm" or self.norm_scope == "global" or self.dp == 1:
            return algo.process_rewards(logp_prm, logp_ref, mask, norm=self.norm, **kw)
        # the reference repos normalise each DP rank's contiguous shard with its own max
        shards = [algo.process_rewards(a, b, m, norm="batch_norm", **kw) for a, b, m in
                  zip(logp_prm.chunk(self.dp), logp_ref.chunk(self.dp), mask.chunk(self.dp))]
        return torch.cat(shards)


def _finish(prm: ImplicitPRM, batch: Batch, logp_prm: Tensor, logs: list[dict]) -> tuple:
    mask = batch["response_mask"].bool()
    rm = prm.rewards(logp_prm, batch["logp_ref"], mask)
    metrics = {**_mean(logs), **prm.timer.pop(total=False)}
    metrics["prm/dpo_acc"] = algo.dpo_accuracy(rm, batch["scores"], mask,
                                               group_size=prm.group_size)
    metrics["prm/reward_mean"] = float(algo.masked_mean(rm, mask))
    return rm, metrics


class _PRMUpdate:
    def __init__(self, prm: ImplicitPRM) -> None:
        self.prm = prm

    @property
    def needs_old_logprobs(self) -> bool:
        """ref_type "policy" reads the old policy log-probs before the policy update."""
        return self.prm.use_policy_as_ref


class PRMAfter(_PRMUpdate):
    """Single forward (spec 3.3 "after"): score mini-batch k, then train on it."""

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, float]]:
        batch["logp_ref"] = self.prm.ref_logprobs(batch)
        parts, logs = [], []
        for sl in self.prm.minibatches(batch["input_ids"].shape[0]):
            logp, metrics = self.prm.score_and_train(slice_rows(batch, sl))
            parts.append(logp)
            logs.append(metrics)
        return _finish(self.prm, batch, torch.cat(parts), logs)


class PRMBefore(_PRMUpdate):
    """Double forward (spec 3.3 "before"): update on every mini-batch, then re-score."""

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, float]]:
        batch["logp_ref"] = self.prm.ref_logprobs(batch)
        logs = [self.prm.train_minibatch(slice_rows(batch, sl))
                for sl in self.prm.minibatches(batch["input_ids"].shape[0])]
        return _finish(self.prm, batch, self.prm.logprobs(batch), logs)


class PRMFrozen(_PRMUpdate):
    """No PRM update (the offline-PRM ablation): rewards from the current PRM only."""

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, float]]:
        batch["logp_ref"] = self.prm.ref_logprobs(batch)
        return _finish(self.prm, batch, self.prm.logprobs(batch), [])


class OutcomeOnly:
    """The outcome-only RLOO baseline: no process rewards."""

    prm = None
    needs_old_logprobs = False

    def __call__(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, dict[str, float]]:
        return None, {}


PRM_UPDATES = {"after": PRMAfter, "before": PRMBefore, "none": PRMFrozen}
