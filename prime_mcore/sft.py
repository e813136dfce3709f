"""SFT entry point: ``python -m prime_mcore.sft [experiment=...] [key=value ...]``.

Trains on (prompt, response) traces with the loss on response tokens only; keeps the best
validation checkpoint in ``<run>/best`` and exports it to ``<run>/hf``.
"""

from __future__ import annotations

from prime_mcore.config import SFTConfig


def main(cfg: SFTConfig) -> dict[str, float]:
    """Run (or resume) the SFT job of ``cfg``; returns the final metrics."""
    from prime_mcore.trainers.report import write_report
    from prime_mcore.trainers.sft import SFTTrainer

    trainer = SFTTrainer(cfg)
    metrics = trainer.run()
    if trainer.writer.enabled:
        write_report(trainer.run_dir, title=f"SFT run {cfg.run.name}")
    return metrics


if __name__ == "__main__":
    from prime_mcore.launch import run_cli

    run_cli(main, "sft")
