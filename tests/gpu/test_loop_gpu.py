"""The PRIME loop on one GPU (skipped without CUDA): engines and HF rollouts on the device,
fp32 and bf16, and resume. The CPU suite's tiny run (tests/unit/trainers/test_prime_loop.py)
with the model on CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from tests.unit.trainers.test_prime_loop import config, rows

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _finite(row: dict) -> bool:
    return all(math.isfinite(v) for v in row.values() if isinstance(v, float))


def test_prime_fp32_and_rloo_bf16_on_cuda(tmp_path):
    from prime_mcore.rl import main

    main(config(tmp_path, "run.name=prime"))
    r = rows(tmp_path / "prime")
    assert [x["step"] for x in r] == [1, 2, 3] and all(map(_finite, r))
    assert r[0]["prm/ce_loss"] == pytest.approx(math.log(2), abs=1e-4)
    # rollouts and trainer on the same GPU in fp32: the same log-probs up to kernel order
    assert max(x["rollout/logprob_gap_mean"] for x in r) < 1e-3
    assert r[-1]["policy/grad_norm"] > 0 and (tmp_path / "prime" / "report.md").is_file()

    main(config(tmp_path, "run.name=bf16", "algo=rloo", "model.params_dtype=bf16"))
    rb = rows(tmp_path / "bf16")
    assert len(rb) == 3 and all(map(_finite, rb))
    # bf16 rollouts (HF, on the GPU in the trainer's precision) vs the bf16 engine
    assert max(x["rollout/logprob_gap_mean"] for x in rb) < 5e-2


def test_resume_on_cuda_continues_the_run(tmp_path):
    from prime_mcore.rl import main

    main(config(tmp_path, "run.name=full"))
    main(config(tmp_path, "run.name=resumed", "run.max_steps=2"))
    main(config(tmp_path, "run.name=resumed", "run.max_steps=3"))
    a, b = rows(tmp_path / "full")[-1], rows(tmp_path / "resumed")[-1]
    assert b["step"] == 3
    # CUDA kernels may reorder sums, so equal to float tolerance rather than bit for bit
    for key in ("train/accuracy", "prm/ce_loss", "policy/loss", "response/length_mean"):
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
