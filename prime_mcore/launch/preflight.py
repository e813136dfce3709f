"""Preflight: everything that can be checked before a job is queued, and the run directory.

A config that would fail on the cluster fails here instead, with the numbers in the message
and nothing queued: hydra composition (unknown keys or options), every ``__post_init__``
check, the TP x PP x DP layout against the requested nodes and GPUs, input files that do not
exist, a missing site file, and (when ``sbatch`` is on PATH) Slurm's own verdict on the
resource request from ``sbatch --test-only``. A passing preflight writes
``<run_dir>/config.yaml`` (resolved) and ``<run_dir>/submit.sbatch`` (what gets queued).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prime_mcore.config import ClusterConfig, check_layout
from prime_mcore.launch.registry import EntryPoint, compose, repo_root, to_typed
from prime_mcore.launch.sbatch import check_sbatch, render_sbatch

__all__ = ["PreflightError", "Plan", "INPUT_FILE_FIELDS", "override_key", "hydra_value",
           "set_override", "plan_job", "write_plan", "preflight"]

INPUT_FILE_FIELDS = ("data.train_files", "data.val_files")
"""Dotted config fields (a path or a list of paths) that must exist before a job is queued.
Checkpoints a chain's earlier stage will write (model.load_path) are deliberately absent."""


class PreflightError(ValueError):
    """A job that must not be queued; the message says why."""


@dataclass(frozen=True)
class Plan:
    """A checked job, ready to queue."""

    entry: EntryPoint
    overrides: tuple[str, ...]
    """The overrides the job runs with (``run.output_dir`` made absolute)."""
    cfg: Any
    """The typed config (e.g. RLConfig)."""
    resolved: Any
    """The composed DictConfig, as written to config.yaml."""
    run_dir: Path
    job_name: str

    @property
    def cluster(self) -> ClusterConfig:
        return self.cfg.cluster

    @property
    def array_size(self) -> int | None:
        """Tasks of the job array (the entry's ``<shards>.num_shards``); None: a single job."""
        if self.entry.shards is None:
            return None
        return getattr(getattr(self.cfg, self.entry.shards), "num_shards", None)

    @property
    def sbatch_path(self) -> Path:
        return self.run_dir / "submit.sbatch"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"


def override_key(override: str) -> str:
    """``"+a.b=1"`` -> ``"a.b"``; ``"~a.b"`` -> ``"a.b"``."""
    return override.split("=", 1)[0].lstrip("+~")


def hydra_value(value: str) -> str:
    """``value`` as a hydra override value: as it is when plain, else single-quoted."""
    if re.fullmatch(r"[\w./@%+-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_override(overrides: Sequence[str], key: str, value: str) -> list[str]:
    """Replace the override of ``key`` (or append one)."""
    kept = [o for o in overrides if override_key(o) != key]
    return [*kept, f"{key}={hydra_value(value)}"]


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not hasattr(cfg, part):
            return None
        cfg = getattr(cfg, part)
    return cfg


def _check_inputs(cfg: Any) -> None:
    data = getattr(cfg, "data", None)
    if getattr(data, "source", None) == "parquet" and not data.train_files:
        raise PreflightError("data.source=parquet but data.train_files is empty; pass "
                             "data.train_files=[...] or data=builtin")
    for field in INPUT_FILE_FIELDS:
        value = _get(cfg, field)
        paths = [value] if isinstance(value, str) else list(value or [])
        for i, path in enumerate(paths):
            if "://" not in path and not Path(path).exists():
                raise PreflightError(f"{field}[{i}] = {path}: no such file "
                                     f"(checked from {Path.cwd()})")


def _check_module(module: str) -> None:
    """The entry-point module must be importable; found without importing it (no torch)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    if not found:
        raise PreflightError(f"entry-point module {module} not found (run from the repository "
                             f"root; the SFT/RL/eval trainers are prime_mcore.sft/rl/eval)")


def _check_config(cfg: Any, root: Path) -> None:
    if all(hasattr(cfg, name) for name in ("model", "parallel", "cluster")):
        check_layout(cfg.model, cfg.parallel, cfg.cluster)
    _check_inputs(cfg)
    site = root / "slurm" / "env" / f"{cfg.cluster.site}.sh"
    if not site.is_file():
        have = sorted(p.stem for p in site.parent.glob("*.sh"))
        raise PreflightError(f"cluster.site={cfg.cluster.site}: {site} does not exist "
                             f"(sites: {', '.join(have)})")


def _where(entry: EntryPoint) -> str:
    return f"{entry.kind} (configs/{entry.config}.yaml)"


def plan_job(entry: EntryPoint, overrides: Sequence[str]) -> Plan:
    """Compose and validate one job; writes nothing. Raises :class:`PreflightError`."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    root = repo_root()
    where = _where(entry)
    try:
        resolved = compose(entry.config, overrides)
        output_dir = Path(resolved.run.output_dir).absolute()
        overrides = set_override(overrides, "run.output_dir", str(output_dir))
        resolved.run.output_dir = str(output_dir)
        cfg = to_typed(resolved)
        _check_config(cfg, root)
        _check_module(entry.module)
    except PreflightError as err:
        raise PreflightError(f"{where}: {err}") from None
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise PreflightError(f"{where}: {err}") from err
    OmegaConf.resolve(resolved)
    name = str(cfg.run.name).replace("/", "_")
    return Plan(entry=entry, overrides=tuple(overrides), cfg=cfg, resolved=resolved,
                run_dir=output_dir / cfg.run.name, job_name=f"{entry.kind}-{name}")


def write_plan(plan: Plan) -> None:
    """Write config.yaml and submit.sbatch into the run directory (and create logs/)."""
    from omegaconf import OmegaConf

    (plan.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    plan.config_path.write_text(OmegaConf.to_yaml(plan.resolved))
    plan.sbatch_path.write_text(render_sbatch(
        plan.entry, plan.cluster, plan.overrides, job_name=plan.job_name,
        log_dir=plan.run_dir / "logs", root=repo_root(), python=sys.executable,
        array_size=plan.array_size))
    plan.sbatch_path.chmod(0o755)


def preflight(entry: EntryPoint, overrides: Sequence[str], *,
              require_slurm: bool = False) -> Plan:
    """Check one job and write its run directory; raises :class:`PreflightError`.

    When ``cluster.backend`` is "slurm" and ``sbatch`` is on PATH, Slurm checks the rendered
    request with ``sbatch --test-only``. ``require_slurm`` rejects the local backend (for
    callers that can only queue on Slurm, such as plain sbatch).
    """
    plan = plan_job(entry, overrides)
    on_slurm = plan.cluster.backend == "slurm"
    if require_slurm and not on_slurm:
        raise PreflightError(
            f"{_where(entry)}: cluster.backend={plan.cluster.backend} runs on this machine, not "
            f"on Slurm; choose a Slurm cluster config (cluster=slurm_cpu or cluster=slurm_gpu)")
    write_plan(plan)
    if on_slurm and shutil.which("sbatch"):
        verdict = check_sbatch(plan.sbatch_path)
        if verdict is not None:
            raise PreflightError(f"{_where(entry)}: Slurm rejects the request of "
                                 f"{plan.sbatch_path}: {verdict}")
    return plan
