"""The demo's arms: how each is configured, trained and scored.

Arms, all scored by greedy accuracy on one fixed held-out split (the built-in ``rl_test``):

- ``sft``: the SFT model trained to convergence (cosine-decayed LR, best on validation);
- ``sft_more``: ``sft`` plus equal extra compute of continued SFT (best on validation);
- ``rloo``: ``sft`` plus outcome-only RLOO; ``prime``: ``sft`` plus PRIME.

One SFT run is shared; every other arm runs once per seed (the seed drives prompt order and
sampling; the task data are the SFT run's files, so every arm sees the same problems).
*Equal extra compute*: continued SFT takes as many optimizer steps, each on as many
sequences, as the RL arms' policy updates (``max_steps * ppo_epochs * responses /
algo.mini_batch_size`` steps of ``algo.mini_batch_size`` sequences), at the SFT run's final
(decayed) LR; RL's generation and PRM compute come on top and are not matched.

Every training setting lives in ``configs/experiment/sft_demo.yaml`` and ``demo_rl.yaml``;
this module only derives the arms from them.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("sft", "sft_more", "rloo", "prime")
LABELS = {"sft": "SFT (decayed LR, best on val)", "sft_more": "SFT + equal-compute SFT",
          "rloo": "SFT + RLOO (outcome only)", "prime": "SFT + PRIME"}
# --quick: a smoke test of the orchestration (tiny model and splits; numbers are meaningless)
QUICK_SFT = ["model=tiny_qwen2", "data.builtin_num_train=256", "data.builtin_num_val=16",
             "data.builtin_num_test=24", "run.max_steps=4", "run.eval_every=2",
             "sft.batch_size=16", "sft.micro_batch_size=16"]
QUICK_RL = ["model=tiny_qwen2", "run.max_steps=2", "data.train_batch_size=4",
            "algo.mini_batch_size=16", "algo.micro_batch_size=16", "prm.mini_batch_size=16",
            "prm.micro_batch_size=16", "algo.max_refill_rounds=1", "rollout.max_response_length=24"]


@dataclass(frozen=True)
class DemoSettings:
    """Orchestration only; training settings live in the experiment YAMLs."""

    out: Path = Path("runs/demo")
    seeds: tuple[int, ...] = (1, 2, 3)
    quick: bool = False
    jobs: int = 0
    """Arms trained at once, each in its own process with cpus // jobs threads (0: one per
    CPU core). Tiny models use one core far better than two, so 2 jobs on 2 cores finish the
    per-seed arms in about half the time of one job with 2 threads."""
    sft_overrides: list[str] = field(default_factory=list)
    rl_overrides: list[str] = field(default_factory=list)
    """Extra hydra overrides (e.g. for the benchmark or a sweep); applied last."""


# ----------------------------------------------------------------------------- plumbing
def compose(config: str, overrides: list[str]) -> Any:
    """The typed config of ``configs/<config>.yaml`` with ``overrides``."""
    from prime_mcore.launch.registry import compose as hydra_compose
    from prime_mcore.launch.registry import to_typed

    return to_typed(hydra_compose(config, overrides))


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """Wall and CPU seconds (this process and its children) of the block."""
    box: dict[str, float] = {}
    wall, cpu = time.perf_counter(), _cpu_seconds()
    try:
        yield box
    finally:
        box.update(wall_s=time.perf_counter() - wall, cpu_s=_cpu_seconds() - cpu)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a crash never leaves a half-written marker


def _files(paths: list[Path]) -> str:
    return "[" + ",".join(f"'{p}'" for p in paths) + "]"


# ----------------------------------------------------------------------------- stages
def sft_config(s: DemoSettings) -> Any:
    """The shared SFT run (generates the task data and tokenizer into <out>/sft/data)."""
    quick = QUICK_SFT if s.quick else []
    return compose("sft", ["experiment=sft_demo", f"run.output_dir={s.out}", "run.name=sft",
                           *quick, *s.sft_overrides])


def rl_config(s: DemoSettings, algo: str, seed: int) -> Any:
    """RLOO or PRIME from the SFT best checkpoint, on the SFT run's files."""
    sft_dir, data = s.out / "sft", s.out / "sft" / "data"
    quick = QUICK_RL if s.quick else []
    return compose("rl", [
        "experiment=demo_rl", f"algo={algo}", f"model.load_path={sft_dir / 'best'}",
        f"model.tokenizer_path={data / 'tokenizer'}", "data.source=parquet",
        f"data.train_files={_files([data / 'rl_train.parquet'])}", "data.val_files=[]",
        f"data.seed={seed}", f"run.seed={seed}", f"run.output_dir={s.out}",
        f"run.name={algo}_s{seed}", *quick, *s.rl_overrides])


def policy_updates(rl_cfg: Any) -> tuple[int, int]:
    """(optimizer steps, sequences per step) of an RL arm's policy updates."""
    responses = rl_cfg.data.train_batch_size * rl_cfg.rollout.n_samples
    per_step = rl_cfg.algo.ppo_epochs * (responses // rl_cfg.algo.mini_batch_size)
    return rl_cfg.run.max_steps * per_step, rl_cfg.algo.mini_batch_size


def sft_more_config(s: DemoSettings, seed: int) -> Any:
    """Continued SFT with the RL arms' policy-update compute, at the SFT's final LR."""
    base, rl = sft_config(s), rl_config(s, "prime", seed)
    steps, batch = policy_updates(rl)
    sft_dir, data = s.out / "sft", s.out / "sft" / "data"
    micro = batch if batch % base.sft.micro_batch_size else base.sft.micro_batch_size
    lr = base.optim.min_lr or base.optim.lr
    return compose("sft", [
        "experiment=sft_demo", f"model.load_path={sft_dir / 'best'}",
        f"model.tokenizer_path={data / 'tokenizer'}", "data.source=parquet",
        f"data.train_files={_files([data / 'sft_train.parquet'])}",
        f"data.val_files={_files([data / 'rl_val.parquet'])}", f"data.seed={seed}",
        f"run.seed={seed}", f"run.max_steps={steps}", f"run.eval_every={max(1, steps // 4)}",
        f"run.save_every={steps}", f"sft.batch_size={batch}", f"sft.micro_batch_size={micro}",
        "sft.warmup_ratio=0.0", "optim.lr_schedule=constant", f"optim.lr={lr}",
        f"optim.min_lr={lr}", f"run.output_dir={s.out}", f"run.name=sft_more_s{seed}",
        *(QUICK_SFT[:1] if s.quick else []), *s.sft_overrides])


def train(run_dir: Path, fn: Callable[[], Any], steps: int, batch: int) -> dict:
    """Run ``fn`` once: <run>/train.json records its cost; present -> skipped."""
    done = _read(run_dir / "train.json")
    if done is not None:
        print(f"[demo]   {run_dir.name}: already trained, skipped", flush=True)
        return done
    if not any((run_dir / "checkpoints").glob("step_*")):
        # a crashed run without a checkpoint restarts from step 1: drop its partial metrics
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    with stopwatch() as t:
        fn()
    record = {"steps": steps, "batch": batch, **t}
    _write(run_dir / "train.json", record)
    return record


def evaluate(checkpoint: Path, model_cfg: Any, data_dir: Path, out_dir: Path, *,
             max_prompt: int, max_new_tokens: int, cache: str = "dynamic") -> dict:
    """Greedy accuracy of an engine checkpoint on ``data_dir/rl_test.parquet`` (the fixed
    held-out split): export to HF, generate with HFBackend, grade with the math verifier.
    Writes <out_dir>/eval.json and the completions in eval_samples.jsonl."""
    from prime_mcore.config import ParallelConfig
    from prime_mcore.convert.engine_io import export_engine_to_hf
    from prime_mcore.data.tokenizer import load_tokenizer
    from prime_mcore.engine import build_engine
    from prime_mcore.rewards import score_batch
    from prime_mcore.rollout import HFBackend, SamplingParams
    from prime_mcore.trainers.common import PromptTokenizer, hf_special_ids, load_examples

    done = _read(out_dir / "eval.json")
    if done is not None:
        return done
    tok_dir = data_dir / "tokenizer"
    tokenizer = load_tokenizer(tok_dir)
    engine = build_engine(model_cfg, ParallelConfig(), None, role="reference", seed=0)
    engine.load(checkpoint, weights_only=True)
    hf_dir = export_engine_to_hf(engine, model_cfg, out_dir / "hf", writer=True,
                                 tokenizer_dir=tok_dir, base_config=hf_special_ids(tokenizer),
                                 force=True)
    examples = load_examples([data_dir / "rl_test.parquet"], skip_bad_rows=False,
                             system_prompt=None)
    prompts = PromptTokenizer(tokenizer, max_prompt)
    backend = HFBackend.from_pretrained(hf_dir, max_batch_size=256, cache=cache)
    with stopwatch() as t:
        out = backend.generate([prompts.ids(ex.prompt) for ex in examples], 1,
                               SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
        texts = [prompts.decode(smp.token_ids) for smp in out.samples]
        scores = [r.score for r in score_batch([(ex.ability, txt, ex.ground_truth)
                                                for ex, txt in zip(examples, texts, strict=True)])]
    backend.close()
    with (out_dir / "eval_samples.jsonl").open("w") as f:
        for ex, txt, sc in zip(examples, texts, scores, strict=True):
            f.write(json.dumps({"truth": ex.ground_truth, "score": sc, "response": txt}) + "\n")
    record = {"accuracy": sum(scores) / len(scores), "correct": int(sum(scores)),
              "n": len(scores), "truncated": out.num_truncated, "checkpoint": str(checkpoint),
              "eval_wall_s": t["wall_s"], "eval_cpu_s": t["cpu_s"]}
    _write(out_dir / "eval.json", record)
    return record


def _eval_arm(cfg: Any, run_dir: Path, checkpoint: Path, s: DemoSettings) -> dict:
    return evaluate(checkpoint, cfg.model, s.out / "sft" / "data", run_dir,
                    max_prompt=cfg.rollout.max_prompt_length,
                    max_new_tokens=cfg.rollout.max_response_length,
                    cache=cfg.rollout.hf_cache)


def run_sft_arm(s: DemoSettings) -> dict:
    from prime_mcore.sft import main as sft_main

    cfg = sft_config(s)
    run_dir = s.out / "sft"
    rec = train(run_dir, lambda: sft_main(cfg), cfg.run.max_steps, cfg.sft.batch_size)
    return {**rec, **_eval_arm(cfg, run_dir, run_dir / "best", s)}


def run_sft_more_arm(s: DemoSettings, seed: int) -> dict:
    from prime_mcore.sft import main as sft_main

    cfg = sft_more_config(s, seed)
    run_dir = s.out / cfg.run.name
    rec = train(run_dir, lambda: sft_main(cfg), cfg.run.max_steps, cfg.sft.batch_size)
    return {**rec, **_eval_arm(cfg, run_dir, run_dir / "best", s)}


def run_rl_arm(s: DemoSettings, algo: str, seed: int) -> dict:
    from prime_mcore.rl import main as rl_main

    cfg = rl_config(s, algo, seed)
    run_dir = s.out / cfg.run.name
    steps, batch = policy_updates(cfg)
    rec = train(run_dir, lambda: rl_main(cfg), steps, batch)
    final = run_dir / "checkpoints" / f"step_{cfg.run.max_steps}" / "policy"
    return {**rec, "rl_steps": cfg.run.max_steps, **_eval_arm(cfg, run_dir, final, s)}




def arm_config(s: DemoSettings, arm: str, seed: int) -> Any:
    """The typed training config of one arm."""
    if arm == "sft":
        return sft_config(s)
    if arm == "sft_more":
        return sft_more_config(s, seed)
    if arm in ("rloo", "prime"):
        return rl_config(s, arm, seed)
    raise ValueError(f"unknown demo arm {arm!r}; expected one of {list(ARMS)}")


SETTINGS_FILE = "demo_settings.json"


class StaleRun(RuntimeError):
    """An arm's directory holds a run trained with other settings."""


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(obj, default=str))}


# Keys that do not change what an arm computes: where it lives, how it is checkpointed/run.
_NOT_SETTINGS = ("run.output_dir", "run.resume", "run.keep_last", "cluster.")


def _settings(s: DemoSettings, cfg: Any) -> dict[str, Any]:
    """The arm's config, flat, without ``_NOT_SETTINGS``; paths under ``--out`` written
    relative to it, so a moved or differently spelt output directory still matches."""
    prefixes = sorted({str(s.out), str(s.out.resolve())}, key=len, reverse=True)

    def rel(v: Any) -> Any:
        if isinstance(v, list):
            return [rel(x) for x in v]
        if isinstance(v, str):
            for p in prefixes:
                if v == p or v.startswith(p + "/"):
                    return "<out>" + v[len(p):]
        return v

    return {k: rel(v) for k, v in _flat(cfg).items() if not k.startswith(_NOT_SETTINGS)}


def check_settings(s: DemoSettings, arm: str, seed: int) -> None:
    """Record an arm's settings on first use; afterwards refuse to reuse or resume its
    directory under other settings (a finished arm is otherwise skipped by directory)."""
    d = arm_dir(s, arm, seed)
    current = _settings(s, arm_config(s, arm, seed))
    saved = _read(d / SETTINGS_FILE)
    if saved is None:
        _write(d / SETTINGS_FILE, current)
        return
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        raise StaleRun(f"{d} was trained with other settings ({diff}{more}); delete that "
                       f"directory or pass another --out")


def arm_dir(s: DemoSettings, arm: str, seed: int) -> Path:
    """Where an arm's run (checkpoints, metrics, train.json, eval.json) lives."""
    return s.out / ("sft" if arm == "sft" else f"{arm}_s{seed}")


def finished(s: DemoSettings, arm: str, seed: int) -> dict | None:
    """The arm's record when it is trained and scored, else None."""
    d = arm_dir(s, arm, seed)
    train_rec, eval_rec = _read(d / "train.json"), _read(d / "eval.json")
    if train_rec is None or eval_rec is None:
        return None
    return {**train_rec, **eval_rec, "seed": seed}


def run_stage(s: DemoSettings, arm: str, seed: int) -> dict:
    """Train and score one arm in this process."""
    check_settings(s, arm, seed)
    if arm == "sft":
        rec = run_sft_arm(s)
    elif arm == "sft_more":
        rec = run_sft_more_arm(s, seed)
    elif arm in ("rloo", "prime"):
        rec = run_rl_arm(s, arm, seed)
    else:
        raise ValueError(f"unknown demo arm {arm!r}; expected one of {list(ARMS)}")
    return {**rec, "seed": seed}
