"""Checkpoints on one process: exact resume, atomicity, pruning and clear errors.

(Resharding across TP/PP/DP layouts is tested with torchrun in tests/dist.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from prime_mcore.config import ParallelConfig
from prime_mcore.engine import CheckpointError, CheckpointManager, build_engine
from tests.unit.engine.cases import MODELS, OPTIM, make_batch, token_loss

CFG = MODELS["llama"]
BATCHES = [make_batch(rows=4, prompt=4, response=5, seed=s) for s in range(3)]


def _policy(**parallel):
    return build_engine(CFG, ParallelConfig(**parallel), OPTIM, role="policy", seed=1,
                        total_steps=4)


def _step(engine, i: int) -> dict[str, float]:
    return engine.train_step(token_loss, BATCHES[i], micro_batch_size=2, normalizer="token")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], torch.Tensor]:
    """A checkpoint after one step, the weights after an uninterrupted second step, and the
    random numbers drawn right after the save."""
    path = tmp_path_factory.mktemp("ckpt") / "step1"
    engine = _policy()
    _step(engine, 0)
    engine.save(path, step=1, user_data={"epoch": 3, "buffer": torch.arange(4)})
    draws = torch.rand(5)
    _step(engine, 1)
    return path, dict(engine.export_weights()), draws


def test_resume_is_exact(saved):
    path, uninterrupted, draws = saved
    engine = _policy()
    step, user_data = engine.load(path)
    assert step == 1
    assert user_data["epoch"] == 3 and torch.equal(user_data["buffer"], torch.arange(4))
    assert torch.equal(torch.rand(5), draws)  # RNG restored (same layout)
    metrics = _step(engine, 1)
    # the schedule continues: step 2 of cosine(1e-4 -> 1e-5, warm-up 1, 4 steps) = cos(pi/3)
    assert metrics["lr"] == pytest.approx(1e-5 + 9e-5 * 0.75, rel=1e-9)
    resumed = dict(engine.export_weights())
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_weights_only_into_a_reference(saved):
    path, _, _ = saved
    policy = _policy()
    policy.load(path)
    reference = build_engine(CFG, ParallelConfig(), None, role="reference", seed=2)
    step, user_data = reference.load(path, weights_only=True)
    assert step == 1 and user_data["epoch"] == 3
    batch = BATCHES[2]
    assert torch.equal(reference.logprobs(batch, micro_batch_size=2),
                       policy.logprobs(batch, micro_batch_size=2))


def test_save_is_atomic_and_replaces(tmp_path):
    engine = _policy()
    (tmp_path / ".ck.tmp").mkdir()  # debris of a crashed save
    (tmp_path / ".ck.tmp" / "junk").write_text("x")
    engine.save(tmp_path / "ck", step=0)
    engine.save(tmp_path / "ck", step=5)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert engine.load(tmp_path / "ck")[0] == 5


def _corrupt_copy(saved, tmp_path: Path) -> Path:
    path = tmp_path / "copy"
    shutil.copytree(saved[0], path)
    return path


@pytest.mark.parametrize("damage", ["delete_shard", "truncate_shard", "flip_common",
                                    "delete_manifest", "missing_dir"])
def test_damaged_checkpoints_name_the_file(saved, tmp_path, damage):
    path = _corrupt_copy(saved, tmp_path)
    shard = sorted((path / "dist").glob("*.distcp"))[0]
    common = path / "dist" / "common.pt"
    if damage == "delete_shard":
        shard.unlink()
        culprit = f"{shard} is missing"
    elif damage == "truncate_shard":
        shard.write_bytes(shard.read_bytes()[:-7])
        culprit = f"{shard} is truncated or corrupt"
    elif damage == "flip_common":
        data = bytearray(common.read_bytes())
        data[len(data) // 2] ^= 0xFF
        common.write_bytes(bytes(data))
        culprit = f"{common} is corrupt: CRC32 mismatch"
    elif damage == "delete_manifest":
        (path / "prime_mcore.json").unlink()
        culprit = f"{path / 'prime_mcore.json'} is missing"
    else:
        path = tmp_path / "nothing"
        culprit = f"{path} does not exist"
    with pytest.raises(CheckpointError) as err:
        _policy().load(path)
    assert culprit in str(err.value)


def test_incompatible_checkpoints_are_refused(saved, tmp_path):
    path = _corrupt_copy(saved, tmp_path)
    manifest = json.loads((path / "prime_mcore.json").read_text())
    with pytest.raises(CheckpointError, match="distributed_optimizer=True"):
        _policy(use_distributed_optimizer=False).load(path)
    manifest["padded_vocab"] = 512
    (path / "prime_mcore.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="padded_vocab=512 in the checkpoint"):
        _policy().load(path)


def test_manager_keeps_the_last_steps(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    assert manager.latest() is None
    policy = _policy()
    reference = build_engine(CFG, ParallelConfig(), None, role="reference", seed=2)
    for step in (1, 2, 3):
        _step(policy, step - 1)
        manager.save(step, {"policy": policy, "reference": reference}, {"seen": step * 10})
    assert manager.steps() == [2, 3]
    assert manager.latest() == tmp_path / "checkpoints" / "step_3"
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_2", "step_3"]
    fresh = _policy()
    assert manager.load(manager.latest(), {"policy": fresh}) == (3, {"seen": 30})
    (manager.latest() / "trainer_state.pt").unlink()
    with pytest.raises(CheckpointError, match="trainer_state.pt is missing"):
        manager.load(manager.latest(), {"policy": fresh})
