"""``python -m prime_mcore.launch``: check and queue SFT, RL, eval, chains and sweeps on Slurm."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from prime_mcore.launch.preflight import Plan, PreflightError, preflight, set_override
from prime_mcore.launch.registry import ENTRY_POINTS, EntryPoint, entry_point
from prime_mcore.launch.submit import plan_chain, plan_sweep, sbatch_chain, sweep

CHAIN = ("sft", "rl", "eval")

EPILOG = """\
examples:
  python -m prime_mcore.launch submit rl --dry-run experiment=tiny_cpu cluster=slurm_cpu
  python -m prime_mcore.launch submit rl experiment=paper data.train_files=[/d/train.parquet]
  python -m prime_mcore.launch submit chain cluster=slurm_gpu sft:run.name=a_sft \\
      rl:run.name=a_rl rl:model.load_path=runs/a_sft/checkpoints eval:run.name=a_eval
  python -m prime_mcore.launch sweep rl experiment=tiny_cpu cluster=slurm_cpu run.seed=1,2,3
  python -m prime_mcore.launch submit curate --shards 16 cluster=slurm_gpu \
      cluster.gpus_per_node=1 cluster.tasks_per_node=1 model.hf_path=/m data.train_files=[/d]

submit checks the config (preflight), writes <run_dir>/config.yaml and <run_dir>/submit.sbatch,
then queues submit.sbatch with sbatch (chain: each stage afterok the previous one; curate
--shards N: a job array of N tasks, one shard each, the last one merging). Overrides
of a chain prefixed with sft:, rl: or eval: apply to that stage only. sweep runs a hydra
multirun on hydra-submitit-launcher and waits for the final metrics of every point.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m prime_mcore.launch", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check and queue prime_mcore jobs on Slurm.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, kinds, text in (
            ("submit", [*ENTRY_POINTS, "chain"], "queue one job, or the SFT -> RL -> eval chain"),
            ("sweep", list(ENTRY_POINTS), "run a hydra multirun sweep and print its metrics")):
        cmd = commands.add_parser(name, help=text, description=text)
        cmd.add_argument("kind", choices=kinds)
        cmd.add_argument("--dry-run", action="store_true",
                         help="preflight and write the run dir(s), queue nothing")
        cmd.add_argument("--module", help="entry-point module to run instead of the kind's "
                         "(must define main(cfg) and compose --config)")
        cmd.add_argument("--config", help="hydra config name (configs/<config>.yaml) instead "
                         "of the kind's")
        cmd.add_argument("--shards", type=int, help="sharded kinds (curate): run as a job "
                         "array of this many tasks, one shard each")
        cmd.add_argument("overrides", nargs="*", help="hydra overrides, e.g. run.max_steps=10")
    return parser


def _describe(plan: Plan) -> str:
    cluster, parallel = plan.cluster, getattr(plan.cfg, "parallel", None)
    layout = f"{cluster.nodes} node(s) x {cluster.tasks_per_node} task(s)"
    if parallel is not None:
        dp = cluster.world_size // (parallel.tp * parallel.pp)
        layout += f", tp={parallel.tp} pp={parallel.pp} dp={dp}"
    if plan.array_size:
        layout += f", job array of {plan.array_size} task(s)"
    return (f"{plan.entry.kind}: {layout}\n  config: {plan.config_path}\n"
            f"  sbatch: {plan.sbatch_path}")


def _stage_overrides(kind: str, overrides: Sequence[str]) -> list[str]:
    prefixes = tuple(f"{k}:" for k in CHAIN)
    return [o.split(":", 1)[1] if o.startswith(prefixes) else o for o in overrides
            if not o.startswith(prefixes) or o.startswith(f"{kind}:")]


def _entry(kind: str, args: argparse.Namespace) -> EntryPoint:
    return entry_point(kind, module=args.module, config=args.config)


def _submit(args: argparse.Namespace) -> None:
    if args.shards is not None:
        entry = _entry(args.kind, args) if args.kind != "chain" else None
        if entry is None or entry.shards is None:
            raise PreflightError(f"--shards applies to sharded kinds (curate), not {args.kind}")
        if args.shards < 1:
            raise PreflightError(f"--shards={args.shards} must be >= 1")
        args.overrides = set_override(args.overrides, f"{entry.shards}.num_shards",
                                      str(args.shards))
    if args.kind == "chain":
        plans = plan_chain([(_entry(k, args), _stage_overrides(k, args.overrides))
                            for k in CHAIN], require_slurm=True)
    else:
        plans = [preflight(_entry(args.kind, args), args.overrides, require_slurm=True)]
    for plan in plans:
        print(f"preflight ok: {_describe(plan)}")
    if args.dry_run:
        print("dry run: nothing queued")
        return
    for plan, job_id in zip(plans, sbatch_chain(plans), strict=True):
        task = "_<task>" if plan.array_size else ""
        print(f"queued {plan.job_name} as job {job_id}; log: {plan.run_dir}/logs/"
              f"{plan.job_name}-{job_id}{task}.out")


def _sweep(args: argparse.Namespace) -> None:
    entry = _entry(args.kind, args)
    if args.dry_run:
        for plan in plan_sweep(entry, args.overrides).plans:
            print(f"preflight ok: {_describe(plan)}")
        print("dry run: nothing queued")
        return
    for result in sweep(entry, args.overrides):
        print(json.dumps(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # Overrides may come before or after the options: collect the leftovers as overrides.
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]
    try:
        (_submit if args.command == "submit" else _sweep)(args)
    except PreflightError as err:
        print(f"preflight failed: {err}\nnothing was queued", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
