"""PRIME RL entry point: ``python -m prime_mcore.rl [experiment=...] [key=value ...]``.

Composes ``configs/rl.yaml`` with hydra, validates it into ``RLConfig`` and runs the loop;
on Slurm every rank runs this under ``srun`` (see ``slurm/prime_rl.sbatch``).
"""

from __future__ import annotations

from prime_mcore.config import RLConfig


def main(cfg: RLConfig) -> dict[str, float]:
    """Run (or resume) the RL job of ``cfg``; returns the final step's metrics."""
    from prime_mcore.trainers.build import build_rl
    from prime_mcore.trainers.report import write_report

    trainer = build_rl(cfg)
    try:
        metrics = trainer.run()
    finally:
        trainer.close()
    if trainer.is_writer:
        write_report(trainer.run_dir, title=f"{cfg.algo.name.upper()} run {cfg.run.name}")
    return metrics


if __name__ == "__main__":
    from prime_mcore.launch import run_cli

    run_cli(main, "rl")
