"""TRL side of benchmarks/bench_trl.py: TRL's RLOOTrainer on CPU, per-step wall times as JSON.

Runs under .venv-bench (TRL's stack) with PYTHONPATH at the repository root, so the reward
is prime_mcore.rewards' VerifierPool: the verifier prime_mcore's RLOO scores with. Started
by bench_trl.py, which writes the inputs (HF model directory, prompts JSONL) and reads
``<out>/steps.jsonl`` (one line per finished RL step, for progress) and ``<out>/result.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="HF model directory")
    # The task tokenizer's own folder: AutoTokenizer on a folder whose config.json says qwen2
    # builds Qwen2Tokenizer, whose pre-tokenizer splits the built-in task's text differently.
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory")
    p.add_argument("--prompts", type=Path, required=True,
                   help="JSONL rows: prompt (messages), prompt_ids, ground_truth, ability")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True, help="RL steps (generation batches)")
    p.add_argument("--prompts-per-step", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--max-new-tokens", type=int, required=True)
    p.add_argument("--mini-batch", type=int, required=True)
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--cache", choices=("static", "dynamic"), default="dynamic",
                   help="generate's KV cache (TRL's cache_implementation)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from prime_mcore.rewards import VerifierPool

    rows = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    tok = AutoTokenizer.from_pretrained(str(args.tokenizer))
    # TRL templates conversational prompts exactly like this (RLOOTrainer._tokenize_prompts);
    # the ids must be the ones prime_mcore's PromptTokenizer produced for the same rows.
    ids = tok.apply_chat_template(conversation=[r["prompt"] for r in rows], tokenize=True,
                                  add_generation_prompt=True, return_dict=True)["input_ids"]
    bad = [i for i, (a, r) in enumerate(zip(ids, rows)) if list(a) != r["prompt_ids"]]
    if bad:
        raise SystemExit(f"chat-templated prompt ids differ from prime_mcore's for rows {bad[:5]}")
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "ground_truth", "ability")}
                                 for r in rows])

    pool = VerifierPool(2)  # as prime_mcore's RolloutSide (verifier_workers=2)

    def verifier(prompts: list, completions: list[list[dict]], ground_truth: list[str],
                 ability: list[str], **_: object) -> list[float]:
        """TRL reward function: the verifier's score of each completion."""
        items = [(a, c[0]["content"], gt) for a, c, gt in zip(ability, completions, ground_truth)]
        return [float(r.score) for r in pool.score(items)]

    responses = args.prompts_per_step * args.k
    opt_steps = responses // args.mini_batch  # optimizer steps (TRL global steps) per RL step
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = (out / "steps.jsonl").open("w")

    class StepTimes(TrainerCallback):
        """Wall seconds between consecutive optimizer-step ends, summed per RL step, and
        the seconds of the ``timed`` trainer methods within each RL step."""

        def __init__(self) -> None:
            self.last, self.ticks, self.steps, self.logs = 0.0, [], [], []
            self.phases: list[dict[str, float]] = []
            self.acc: dict[str, float] = {}

        def timed(self, name: str, fn):
            def wrapper(*a, **kw):
                start = time.perf_counter()
                try:
                    return fn(*a, **kw)
                finally:
                    self.acc[name] = self.acc.get(name, 0.0) + time.perf_counter() - start
            return wrapper

        def on_train_begin(self, *a, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, *a, **kw):
            now = time.perf_counter()
            self.ticks.append(now - self.last)
            self.last = now
            if len(self.ticks) % opt_steps == 0:
                self.steps.append(sum(self.ticks[-opt_steps:]))
                self.phases.append(self.acc)
                self.acc = {}
                progress.write(json.dumps({"step": len(self.steps), "seconds": self.steps[-1]})
                               + "\n")
                progress.flush()

        def on_log(self, *a, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    use_rloo = hasattr(trl, "RLOOTrainer")  # GRPO (same group size) only on TRLs without it
    config_cls = trl.RLOOConfig if use_rloo else trl.GRPOConfig
    trainer_cls = trl.RLOOTrainer if use_rloo else trl.GRPOTrainer
    config = config_cls(
        output_dir=str(out / "trainer"), use_cpu=True, bf16=False, seed=args.seed,
        # TRL defaults that prime_mcore's settings do not have: gradient checkpointing on,
        # linear LR decay, shuffled prompts (prime_mcore's order is written to --prompts)
        gradient_checkpointing=False, lr_scheduler_type="constant", shuffle_dataset=False,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=args.mini_batch // args.micro_batch,
        steps_per_generation=responses // args.micro_batch,  # micro steps per generation
        num_generations=args.k, num_iterations=1, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
        cache_implementation=None if args.cache == "dynamic" else args.cache,
        normalize_advantages=True,  # prime_mcore whitens its advantages over the batch
        learning_rate=args.lr, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.steps * opt_steps,
        # one log, after the last step's on_step_end: no logging inside the timed steps
        logging_steps=args.steps * opt_steps, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    timer = StepTimes()
    trainer = trainer_cls(model=model, reward_funcs=verifier, args=config,
                          train_dataset=dataset, processing_class=tok, callbacks=[timer])
    # Phase times for the report, measured like prime_mcore's PhaseTimer (wrappers only)
    for name in ("_generate", "_calculate_rewards", "_generate_and_score_completions"):
        setattr(trainer, name, timer.timed(name, getattr(trainer, name)))
    try:
        trainer.train()
    finally:
        pool.close()
        progress.close()
    result = {"trl_version": trl.__version__, "trainer": trainer_cls.__name__,
              "torch_threads": torch.get_num_threads(), "step_seconds": timer.steps,
              "phases": timer.phases,
              "logs": timer.logs}
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
