"""A real, tiny distributed trainer that follows the entry-point contract of prime_mcore.launch.

``python -m tests.slurm.toy_train <hydra overrides of configs/rl.yaml>`` (or a submitit job with
``EntryPoint(module="tests.slurm.toy_train", config="rl")``) stands in for ``prime_mcore.rl``
until the real trainers exist, and exercises everything the launcher promises them:

* rank, world size and master come from the environment the launcher exported from SLURM_*;
  gloo over TCP, so on the local cluster the ranks on node1 and node2 really rendezvous;
* a tensor-parallel linear model: weight column-sharded over ``parallel.tp`` consecutive
  ranks, partial products all-reduced in the TP group, gradients all-reduced over DP;
* SGD with momentum (optimizer state that a resume must restore) for ``run.max_steps`` steps on
  batches that depend only on (seed, step, dp rank): a resumed run is bitwise equal to an
  uninterrupted one;
* ``metrics.jsonl`` (rank 0) and atomic checkpoints every ``run.save_every`` steps in
  ``<run.output_dir>/<run.name>/``, resuming from the latest checkpoint.

Test knob (environment, not config: it is no training option): ``TOY_STEP_SLEEP_S`` seconds
of sleep per step, so a test can preempt the job mid-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from prime_mcore.config import RLConfig
from prime_mcore.launch import run_cli

FEATURES = 8
BATCH = 16
LR = 0.05
MOMENTUM = 0.9
STEP_DIR = re.compile(r"step_(\d{6})")


def _groups(world: int, tp: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """This rank's TP group (consecutive ranks) and DP group (same TP index)."""
    rank, tp_group, dp_group = dist.get_rank(), None, None
    for start in range(0, world, tp):  # every rank must create every group, in the same order
        group = dist.new_group(list(range(start, start + tp)))
        if start <= rank < start + tp:
            tp_group = group
    for index in range(tp):
        group = dist.new_group(list(range(index, world, tp)))
        if rank % tp == index:
            dp_group = group
    assert tp_group is not None and dp_group is not None
    return tp_group, dp_group


def _batch(seed: int, step: int, dp_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + dp_rank)
    x = torch.randn(BATCH, FEATURES, generator=gen, dtype=torch.float64)
    target_w = torch.linspace(-1.0, 1.0, FEATURES, dtype=torch.float64)
    return x, x @ target_w + 0.01 * torch.randn(BATCH, generator=gen, dtype=torch.float64)


def _latest(ckpt_dir: Path) -> tuple[int, Path] | None:
    steps = [(int(m.group(1)), p) for p in ckpt_dir.glob("step_*")
             if (m := STEP_DIR.fullmatch(p.name))]
    return max(steps) if steps else None


def _save(ckpt_dir: Path, step: int, rank: int, state: dict, keep_last: int) -> None:
    """All ranks write into a temp dir; rank 0 publishes it with one atomic rename."""
    tmp = ckpt_dir / f".tmp_step_{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a kill mid-save
        tmp.mkdir(parents=True)
    dist.barrier()
    torch.save(state, tmp / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        os.replace(tmp, ckpt_dir / f"step_{step:06d}")
        for old in sorted(ckpt_dir.glob("step_*"))[:-keep_last]:
            shutil.rmtree(old)
    dist.barrier()


def _reset_metrics(path: Path, step: int) -> None:
    """Drop lines of steps after the checkpoint we resume from: they are run again."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines()
                 if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def main(cfg: RLConfig) -> dict[str, float]:
    """Train, checkpoint, resume; returns the final metrics on every rank."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
        rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        return _train(cfg, rank, world)
    finally:
        dist.destroy_process_group()


def _train(cfg: RLConfig, rank: int, world: int) -> dict[str, float]:
    tp = cfg.parallel.tp
    tp_group, dp_group = _groups(world, tp)
    tp_rank, dp_rank, dp = rank % tp, rank // tp, world // tp
    shard = slice(tp_rank * FEATURES // tp, (tp_rank + 1) * FEATURES // tp)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    ckpt_dir, metrics_path = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    sleep_s = float(os.environ.get("TOY_STEP_SLEEP_S", "0"))

    gen = torch.Generator().manual_seed(cfg.run.seed)
    state = {"step": 0, "loss": float("nan"),
             "w": torch.randn(FEATURES, generator=gen, dtype=torch.float64)[shard].clone(),
             "v": torch.zeros(FEATURES // tp, dtype=torch.float64)}
    latest = _latest(ckpt_dir) if cfg.run.resume else None
    if latest is not None:
        state = torch.load(latest[1] / f"rank_{rank:05d}.pt")
        if rank == 0:
            print(f"rank 0: resumed from {latest[1]} (restart {restart})", flush=True)
            _reset_metrics(metrics_path, state["step"])
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)

    for step in range(state["step"] + 1, cfg.run.max_steps + 1):
        x, y = _batch(cfg.run.seed, step, dp_rank)
        pred = x[:, shard] @ state["w"]
        dist.all_reduce(pred, group=tp_group)  # row-parallel linear: sum of partial products
        err = pred - y
        grad = x[:, shard].T @ (2.0 * err / BATCH)
        dist.all_reduce(grad, group=dp_group)
        state["v"] = MOMENTUM * state["v"] + grad / dp
        state["w"] = state["w"] - LR * state["v"]
        loss = (err**2).mean()
        dist.all_reduce(loss, group=dp_group)
        loss /= dp
        state["step"], state["loss"] = step, loss.item()
        norm2 = state["w"].pow(2).sum()
        dist.all_reduce(norm2, group=tp_group)
        if rank == 0:  # log before saving: a kill in between re-runs (and re-logs) the step
            with metrics_path.open("a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(),
                                    "weight_norm": norm2.sqrt().item(), "restart": restart,
                                    "world": world, "time": time.time()}) + "\n")
        if step % cfg.run.save_every == 0 or step == cfg.run.max_steps:
            _save(ckpt_dir, step, rank, state, cfg.run.keep_last)
        time.sleep(sleep_s)
    norm2 = state["w"].pow(2).sum()
    dist.all_reduce(norm2, group=tp_group)
    return {"step": float(state["step"]), "loss": state["loss"],
            "weight_norm": norm2.sqrt().item()}


if __name__ == "__main__":
    run_cli(main, "rl")
