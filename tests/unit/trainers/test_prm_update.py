"""PRM update "after" (spec 3.3, single forward): mini-batch k is scored by the PRM after
k-1 of this step's updates. Its scores come from the training forward; they must equal an
explicit no-grad scoring forward before each update (the double-forward reading)."""

from __future__ import annotations

import pytest
import torch

from prime_mcore import algo
from prime_mcore.config import ParallelConfig
from prime_mcore.trainers.roles import ImplicitPRM, PRMAfter, slice_rows
from tests.unit.engine.cases import MODELS, OPTIM, make_batch

CFG = MODELS["qwen2"]
GROUP = 4


@pytest.fixture(scope="module", autouse=True)
def _world1():
    yield
    from prime_mcore.engine import destroy_distributed

    destroy_distributed()


def _prm() -> ImplicitPRM:
    from prime_mcore.engine import build_engine

    engine = build_engine(CFG, ParallelConfig(), OPTIM, role="prm", seed=0, total_steps=8)
    # another seed: a reference unlike the PRM, so the implicit rewards are not all zero
    ref = build_engine(CFG, ParallelConfig(), None, role="reference", seed=1)
    return ImplicitPRM(engine, ref, beta=0.05, convention="orig", granularity="token",
                       norm="none", norm_scope="global", dp_size=1, group_size=GROUP,
                       mini_batch_size=4, micro_batch_size=2)


def test_after_scores_each_minibatch_before_its_own_update():
    batch = make_batch(rows=12, prompt=5, response=6, seed=2)
    batch["scores"] = torch.tensor([1.0, 0.0, 0.0, 1.0] * 3)
    mask = batch["response_mask"].bool()

    prm = _prm()
    rm, metrics = PRMAfter(prm)(dict(batch))

    twin = _prm()  # same seed: same weights; the explicit two-forward version of "after"
    ref = twin.ref_logprobs(batch)
    parts = []
    for sl in twin.minibatches(12):
        mb = slice_rows({**batch, "logp_ref": ref}, sl)
        parts.append(twin.logprobs(mb))
        twin.train_minibatch(mb)
    expected = algo.process_rewards(torch.cat(parts), ref, mask, beta=0.05, convention="orig",
                                    granularity="token", norm="none")
    assert float((rm - expected).abs().max()) < 1e-6
    # the updates happened in between: scoring everything with the step's first PRM differs
    frozen = _prm()
    first = algo.process_rewards(frozen.logprobs(batch), ref, mask, beta=0.05,
                                 convention="orig", granularity="token", norm="none")
    assert float((rm[4:] - first[4:]).abs().max()) > 1e-4
    assert float((rm[:4] - first[:4]).abs().max()) < 1e-6
    w, t = dict(prm.engine.export_weights()), dict(twin.engine.export_weights())
    assert max(float((w[k] - t[k]).abs().max()) for k in w) == 0.0
    assert {"prm/ce_loss", "prm/dpo_acc", "time/prm/update", "time/prm/ref_forward"} <= set(metrics)
