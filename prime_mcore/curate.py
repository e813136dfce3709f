"""Curation entry point: ``python -m prime_mcore.curate data.train_files=[...] model.hf_path=V``.

Reads Eurus-2-RL-Data-style parquet, samples ``rollout.n_samples`` attempts per problem from
the validator ``model.hf_path`` (vLLM or HF backend), grades them against the ground truth
and keeps the problems that pass the agreement rule (``curate.min_correct`` of N correct, the
ground truth the plurality answer). Writes into ``<run.output_dir>/<run.name>/``:
``kept.parquet`` (the kept rows, same schema), ``stats.parquet`` (per problem: solve rate,
answer distribution, decision), ``summary.md`` / ``summary.json`` (decisions, attempt
outcomes, the solve-rate histogram the online filter will see, per-source counts).

Sharded as a Slurm job array (``sbatch --array=0-15 slurm/curate.sbatch ...``: the shard is
$SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT) or by hand (``curate.shard_index=3
curate.num_shards=16``); without either, every shard runs here in turn. Rerunning skips
finished shards and resumes a killed one after its last saved chunk; the last shard to
finish merges (``curate.stage=merge`` merges by hand). See prime_mcore/curation/.
"""

from __future__ import annotations

from prime_mcore.config import CurateConfig


def main(cfg: CurateConfig) -> dict[str, float]:
    """Run this process's shard(s) of ``cfg`` (and the merge once all are done)."""
    from prime_mcore.curation.runner import run_curation

    return run_curation(cfg)


if __name__ == "__main__":
    from prime_mcore.launch import run_cli

    run_cli(main, "curate")
