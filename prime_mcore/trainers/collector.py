"""Rollout collection for one RL step: sample prompts, generate K each, verify, filter.

The online accuracy filter (spec 6) keeps groups whose mean score lies in [low, high]. The
batch is refilled (ORIG): more prompts are drawn and generated until ``train_batch_size``
groups passed, surplus passing prompts go back to a buffer that is served first next step.
After ``max_rounds`` rounds a short batch is topped up with failing groups (veRL's rule),
counted in ``filter/filled``, so a step never stalls on a strict filter.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from prime_mcore import algo
from prime_mcore.data.schema import RLExample
from prime_mcore.rollout import RolloutBackend, Sample, SamplingParams
from prime_mcore.trainers.metrics import PhaseTimer


@dataclass
class PromptSource:
    """Endless, seeded, resumable iteration over RL examples with a refill buffer.

    Each epoch visits every example once in a permutation drawn from (seed, epoch); pushed
    back prompts (ORIG's prompt buffer) are served before new ones.
    """

    num_examples: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0
    buffer: list[int] = field(default_factory=list)

    def _order(self) -> list[int]:
        order = list(range(self.num_examples))
        if self.shuffle:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[int]:
        if self.num_examples == 0:
            raise ValueError("no training prompts")
        out = self.buffer[:n]
        self.buffer = self.buffer[n:]
        order = self._order()
        while len(out) < n:
            if self.position >= self.num_examples:
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            out.append(order[self.position])
            self.position += 1
        return out

    def push_back(self, indices: Sequence[int]) -> None:
        self.buffer = list(indices) + self.buffer

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.buffer = [int(i) for i in state["buffer"]]


@dataclass
class Collected:
    """The kept groups of one step: ``n`` consecutive samples per prompt."""

    prompt_indices: list[int]
    samples: list[Sample]
    scores: torch.Tensor
    """[B] verifier scores (float32)."""
    metrics: dict[str, float]


Verifier = Callable[[list[tuple[str, str, str]]], list]
"""(ability, completion, ground_truth) items -> results with ``.score`` and ``.reason``."""


class RolloutCollector:
    """Generates, verifies and filters until the step's batch is full (see module doc)."""

    def __init__(self, *, examples: Sequence[RLExample], prompt_ids: Callable[[int], list[int]],
                 decode: Callable[[list[int]], str], source: PromptSource,
                 backend: RolloutBackend, verifier: Verifier, sampling: SamplingParams, n: int,
                 train_batch_size: int, low: float, high: float, filter_groups: bool,
                 filter_truncated: bool, oversample_factor: int, max_rounds: int) -> None:
        self.examples, self.prompt_ids, self.decode = examples, prompt_ids, decode
        self.source, self.backend, self.verifier = source, backend, verifier
        self.sampling, self.n, self.batch_size = sampling, n, train_batch_size
        self.low, self.high, self.filter_groups = low, high, filter_groups
        self.filter_truncated = filter_truncated
        self.oversample, self.max_rounds = oversample_factor, max_rounds
        self.timer = PhaseTimer()  # sub-phases of the loop's "rollout" phase

    def collect(self, step: int, seed: int) -> Collected:
        kept: list[tuple[int, list[Sample], list[float]]] = []
        rejected: list[tuple[int, list[Sample], list[float]]] = []
        counts = {"generated": 0, "passed": 0, "truncated": 0, "responses": 0}
        reasons: dict[str, int] = {}
        for rnd in range(self.max_rounds):
            need = self.batch_size - len(kept)
            if need <= 0:
                break
            idx = self.source.take(need * self.oversample)
            groups = self._generate_and_score(idx, seed=seed * 1_000_003 + step * 101 + rnd,
                                              reasons=reasons, counts=counts)
            for g in groups:
                ok = not self.filter_groups or self._passes(g)
                (kept if ok else rejected).append(g)
                counts["passed"] += ok
        surplus = kept[self.batch_size:]
        self.source.push_back([g[0] for g in surplus])  # ORIG: regenerate them next step
        kept = kept[: self.batch_size]
        filled = max(0, self.batch_size - len(kept))
        kept += rejected[len(rejected) - filled:] if filled else []
        if len(kept) < self.batch_size:
            raise RuntimeError(f"collected only {len(kept)} of {self.batch_size} prompt groups")
        scores = torch.tensor([s for g in kept for s in g[2]], dtype=torch.float32)
        metrics = {
            "filter/pass_rate": counts["passed"] / max(counts["generated"], 1),
            "filter/prompts_generated": float(counts["generated"]),
            "filter/filled": float(filled),
            "rollout/truncation_rate": counts["truncated"] / max(counts["responses"], 1),
            "train/accuracy": _mean_scores_seen(counts),
            **{f"verifier/{k}": float(v) for k, v in sorted(reasons.items())},
            **self.timer.pop(total=False),
        }
        return Collected([g[0] for g in kept], [s for g in kept for s in g[1]], scores, metrics)

    def _passes(self, group: tuple[int, list[Sample], list[float]]) -> bool:
        scores = torch.tensor(group[2])
        ok = bool(algo.accuracy_filter(scores, group_size=self.n, low=self.low,
                                       high=self.high)[0])
        if ok and self.filter_truncated:
            ok = not any(s.finish_reason == "length" for s in group[1])
        return ok

    def _generate_and_score(self, idx: list[int], *, seed: int, reasons: dict[str, int],
                            counts: dict[str, float]) -> list[tuple[int, list[Sample], list[float]]]:
        with self.timer("rollout/generate"):
            out = self.backend.generate([self.prompt_ids(i) for i in idx], self.n,
                                        self.sampling.replace(seed=seed))
        with self.timer("rollout/verify"):
            items = []
            for k, s in enumerate(out.samples):
                ex = self.examples[idx[k // self.n]]
                items.append((ex.ability, self.decode(s.token_ids), ex.ground_truth))
            results = self.verifier(items)
        for r in results:
            key = str(getattr(r.reason, "value", r.reason))
            reasons[key] = reasons.get(key, 0) + 1
        scores = [float(r.score) for r in results]
        counts["generated"] += len(idx)
        counts["responses"] += len(scores)
        counts["truncated"] += out.num_truncated
        counts["score_sum"] = counts.get("score_sum", 0.0) + sum(scores)
        return [(i, out.group(g), scores[g * self.n:(g + 1) * self.n]) for g, i in enumerate(idx)]


def _mean_scores_seen(counts: dict[str, float]) -> float:
    return counts.get("score_sum", 0.0) / max(counts["responses"], 1)
