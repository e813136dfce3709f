"""The policy update without a separate old-log-prob forward: when the step is one optimizer
step on the whole batch, its training forward runs at the rollout weights, so its log-probs
are the old ones. The result must equal the two-forward update, and the old log-probs it
fills in must equal the separate forward's."""

from __future__ import annotations

import pytest
import torch

from prime_mcore.config import ParallelConfig
from prime_mcore.trainers.roles import OutcomeOnly, Policy
from tests.unit.engine.cases import MODELS, OPTIM, make_batch


@pytest.fixture(scope="module", autouse=True)
def _world1():
    yield
    from prime_mcore.engine import destroy_distributed

    destroy_distributed()


def _policy(mini: int, **regularisers) -> Policy:
    from prime_mcore.engine import build_engine

    engine = build_engine(MODELS["qwen2"], ParallelConfig(), OPTIM, role="policy", seed=0,
                          total_steps=8)
    return Policy(engine, temperature=1.0, mini_batch_size=mini, micro_batch_size=4,
                  clip_eps=0.2, dual_clip=None, agg="seq-mean-token-mean", ppo_epochs=1,
                  shuffle=True, **regularisers)


def _reference():
    from prime_mcore.engine import build_engine

    # seed 0: the policy's initial weights (the frozen SFT model in a real run)
    return build_engine(MODELS["qwen2"], ParallelConfig(), None, role="reference", seed=0)


def _batch() -> dict[str, torch.Tensor]:
    b = make_batch(rows=8, prompt=5, response=6, seed=7)
    return {k: b[k] for k in ("input_ids", "attention_mask", "response_mask", "advantages")}


def test_single_update_takes_old_logprobs_from_its_own_forward():
    explicit, reused = _policy(8), _policy(8)
    a = _batch()
    a["logp_old"] = explicit.logprobs(a)
    m_a = explicit.update(a, seed=3)

    b = _batch()
    assert reused.old_logprobs(b, needed_now=False) is None
    m_b = reused.update(b, seed=3)  # shuffled rows: the filled-in log-probs are unshuffled
    assert float((b["logp_old"] - a["logp_old"]).abs().max()) < 1e-6
    assert m_b["policy/loss"] == pytest.approx(m_a["policy/loss"], abs=1e-6)
    assert m_b["policy/pg_clipfrac"] == m_a["policy/pg_clipfrac"] == 0.0
    w_a, w_b = dict(explicit.engine.export_weights()), dict(reused.engine.export_weights())
    assert max(float((w_a[k] - w_b[k]).abs().max()) for k in w_a) < 1e-7


def test_separate_forward_whenever_the_update_is_not_a_single_step():
    two_minibatches = _policy(4)
    batch = _batch()
    old = two_minibatches.old_logprobs(batch, needed_now=False)
    assert old is not None and old.shape == batch["response_mask"].shape
    # ref_type "policy" reads them in the PRM phase, before the update
    assert _policy(8).old_logprobs(batch, needed_now=True) is not None
    assert OutcomeOnly().needs_old_logprobs is False


def test_entropy_bonus_and_kl_loss_enter_the_loss():
    plain = _policy(8)
    regular = _policy(8, entropy_coef=0.01, kl_coef=0.1, reference=_reference())
    m_plain, m_reg = plain.update(_batch(), seed=3), regular.update(_batch(), seed=3)
    # step 1: the policy is still the reference, so KL is 0 and only the bonus moves the loss
    assert m_reg["policy/kl_loss"] == pytest.approx(0.0, abs=1e-7)
    assert 0.5 < m_reg["policy/entropy"] < float(torch.log(torch.tensor(250.0)))
    assert m_reg["policy/loss"] == pytest.approx(
        m_plain["policy/loss"] - 0.01 * m_reg["policy/entropy"], abs=1e-6)
    assert "policy/entropy" not in m_plain and "policy/kl_loss" not in m_plain
    # step 2: the policy moved away from the reference
    assert regular.update(_batch(), seed=4)["policy/kl_loss"] > 0


def test_kl_reuses_the_prm_reference_logprobs():
    policy = _policy(8, kl_coef=0.1, reuse_prm_reference=True)
    batch = _batch()
    batch["logp_old"] = policy.logprobs(batch)
    batch["logp_ref"] = batch["logp_old"] - 0.1  # log(ref / pi) = -0.1 at every token
    m = policy.update(batch, seed=3)
    k3 = float(torch.exp(torch.tensor(-0.1)) + 0.1 - 1)
    assert m["policy/kl_loss"] == pytest.approx(k3, rel=1e-4)


def test_kl_without_a_reference_is_refused():
    with pytest.raises(ValueError, match="kl_coef > 0 needs a reference engine"):
        _policy(8, kl_coef=0.1)
