"""Supervised fine-tuning on (prompt, response) traces with the loss on response tokens only.

Each step trains on ``sft.batch_size`` rows drawn from a seeded per-epoch permutation
(resumable). Every ``run.eval_every`` steps the policy is scored by greedy accuracy on the
validation prompts; with ``sft.select_best`` the best one is kept in ``<run>/best`` (an
engine checkpoint: RL starts from it with ``model.load_path=<run>/best``) and exported as an
HF directory ``<run>/hf`` at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from prime_mcore.config import SFTConfig
from prime_mcore.data.batching import pad_rollouts
from prime_mcore.data.schema import read_sft_parquet
from prime_mcore.trainers import common
from prime_mcore.trainers.collector import PromptSource
from prime_mcore.trainers.metrics import MetricsWriter, PhaseTimer

log = logging.getLogger("prime_mcore")


def _loss(logp: torch.Tensor, mb: dict[str, torch.Tensor]):
    """Summed negative log-likelihood of the response tokens (engine divides by tokens)."""
    return -(logp * mb["response_mask"]).sum(), {}


class SFTTrainer:
    """Builds everything from an ``SFTConfig`` and runs (or resumes) the job."""

    def __init__(self, cfg: SFTConfig) -> None:
        from prime_mcore.data.tokenizer import load_tokenizer
        from prime_mcore.engine import CheckpointManager, build_engine, init_distributed
        from prime_mcore.trainers.rollout_side import RolloutSide

        self.cfg = cfg
        self.run_dir = common.run_dir_of(cfg.run.output_dir, cfg.run.name)
        init_distributed(cfg.parallel, seed=cfg.run.seed)
        common.seed_all(cfg.run.seed)
        common.write_config(cfg, self.run_dir)
        train_files, self.val, tok_path = self._data()
        self.tokenizer = load_tokenizer(tok_path)
        self.prompts = common.PromptTokenizer(self.tokenizer, cfg.sft.max_length)
        self.rows, self.num_skipped = self._tokenize(train_files)
        warmup = int(cfg.sft.warmup_ratio * cfg.run.max_steps)
        optim = dataclasses.replace(cfg.optim, warmup_steps=warmup)
        self.engine = build_engine(cfg.model, cfg.parallel, optim, role="policy",
                                   seed=cfg.run.seed, total_steps=cfg.run.max_steps)
        log.info("SFT initialised from %s", common.init_weights(self.engine, cfg.model))
        self.rollout = RolloutSide(cfg, self.engine, self.tokenizer, tok_path, self.run_dir)
        self.source = PromptSource(len(self.rows), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints",
                                             keep_last=cfg.run.keep_last)
        self.best = {"accuracy": -1.0, "step": 0}
        self.writer = MetricsWriter(self.run_dir, enabled=common.is_rank0())
        self.timer = PhaseTimer()
        self.tok_path = tok_path

    def _data(self) -> tuple[list[Path], list, Path]:
        d, m = self.cfg.data, self.cfg.model
        if d.source == "builtin":
            paths = common.prepare_builtin(d, self.run_dir / "data")
            train, val_files, tok = [paths["sft_train"]], [paths["rl_val"]], paths["tokenizer"]
        else:
            train, val_files = [Path(f) for f in d.train_files], d.val_files
            tok = m.tokenizer_path or m.hf_path
            missing = [str(f) for f in [*train, *map(Path, val_files)] if not f.exists()]
            if missing or not train:
                raise FileNotFoundError(f"SFT data files not found: {missing or 'none given'}")
        tok = m.tokenizer_path or tok
        if tok is None:
            raise ValueError("no tokenizer: set model.tokenizer_path or model.hf_path")
        val = common.load_examples(val_files, skip_bad_rows=d.skip_bad_rows,
                                   system_prompt=d.system_prompt) if val_files else []
        return train, val, Path(tok)

    def _tokenize(self, files: list[Path]) -> tuple[list[tuple[list[int], list[int]]], int]:
        rows, skipped = [], 0
        eos = self.tokenizer.eos_token_id
        for f in files:
            for row in read_sft_parquet(f):
                p = self.prompts.ids(row.prompt)
                r = self.tokenizer(row.response, add_special_tokens=False)["input_ids"] + [eos]
                if len(p) + len(r) > self.cfg.sft.max_length:
                    skipped += 1
                    continue
                rows.append((p, r))
        if skipped:
            log.warning("skipped %d SFT rows longer than sft.max_length=%d", skipped,
                        self.cfg.sft.max_length)
        if not rows:
            raise ValueError(f"no usable SFT rows in {[str(f) for f in files]}")
        return rows, skipped

    def batch(self) -> dict[str, torch.Tensor]:
        picked = [self.rows[i] for i in self.source.take(self.cfg.sft.batch_size)]
        rb = pad_rollouts([p for p, _ in picked], [r for _, r in picked],
                          self.tokenizer.pad_token_id, eos_id=self.tokenizer.eos_token_id)
        return {"input_ids": rb.input_ids, "attention_mask": rb.attention_mask,
                "response_mask": rb.response_mask}

    def evaluate(self, step: int) -> dict[str, float]:
        self.rollout.sync()
        metrics = self.rollout.evaluate(self.val, self.prompts)
        acc = metrics.get("eval/accuracy")
        if self.cfg.sft.select_best and acc is not None and acc > self.best["accuracy"]:
            self.best = {"accuracy": acc, "step": step}
            self.engine.save(self.run_dir / "best", step=step, user_data={"best": self.best})
        return metrics

    def run(self) -> dict[str, float]:
        cfg, start = self.cfg.run, self._resume()
        metrics: dict[str, float] = {}
        bar = tqdm(range(start + 1, cfg.max_steps + 1), desc="SFT", initial=start,
                   total=cfg.max_steps, disable=not common.is_rank0())
        for step in bar:
            with self.timer("train"):
                t0 = time.perf_counter()
                batch = self.batch()
                m = self.engine.train_step(_loss, batch, micro_batch_size=self.cfg.sft.micro_batch_size,
                                           normalizer="token")
                tokens = float(batch["response_mask"].sum())
            metrics = {"sft/loss": m["loss"], "sft/grad_norm": m["grad_norm"], "sft/lr": m["lr"],
                       "sft/tokens_per_s": tokens / (time.perf_counter() - t0),
                       "sft/epoch": float(self.source.epoch)}
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                with self.timer("eval"):
                    metrics.update(self.evaluate(step))
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                with self.timer("checkpoint"):
                    self.checkpoints.save(step, {"policy": self.engine},
                                          {"source": self.source.state_dict(), "best": self.best})
            metrics.update(self.timer.pop())
            self.writer.log(step, metrics)
            bar.set_postfix(loss=f"{m['loss']:.3f}", acc=f"{metrics.get('eval/accuracy', -1):.3f}")
        self._export()
        self.writer.close()
        self.rollout.close()
        return {**metrics, "sft/best_accuracy": self.best["accuracy"],
                "sft/best_step": float(self.best["step"])}

    def _resume(self) -> int:
        latest = self.checkpoints.latest() if self.cfg.run.resume else None
        if latest is None:
            return 0
        step, state = self.checkpoints.load(latest, {"policy": self.engine})
        self.source.load_state_dict(state["source"])
        self.best = dict(state["best"])
        self.writer.truncate_after(step)
        return step

    def _export(self) -> None:
        """<run>/hf: the best (or final) weights as an HF directory for vLLM and eval."""
        from prime_mcore.convert.engine_io import export_engine_to_hf

        if self.cfg.sft.select_best and (self.run_dir / "best").exists():
            self.engine.load(self.run_dir / "best", weights_only=True)
        export_engine_to_hf(self.engine, self.cfg.model, self.run_dir / "hf",
                            writer=common.is_rank0(), tokenizer_dir=self.tok_path,
                            base_config=common.hf_special_ids(self.tokenizer), force=True)
        common.barrier()
