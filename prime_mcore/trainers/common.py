"""Construction shared by the SFT, RL and eval loops: run dir, data, tokenizer, weights.

Rank 0 owns the rollout backend and the verifier; the other ranks take part in every
collective engine call and receive rank 0's rollouts by broadcast.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from prime_mcore.config import DataConfig, ModelConfig
from prime_mcore.data.schema import RLExample, read_rl_parquet

log = logging.getLogger("prime_mcore")

BUILTIN_TOKENIZER = "tokenizer"


def run_dir_of(output_dir: str, name: str) -> Path:
    return Path(output_dir) / name


def is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled through the default group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def write_config(cfg: Any, run_dir: Path) -> None:
    """The resolved config as YAML in the run dir (rank 0), and the model's architecture as
    model_config.json so that tools/convert/mcore_to_hf.py can convert any checkpoint below."""
    if not is_rank0():
        return
    from omegaconf import OmegaConf

    from prime_mcore.convert.dist_io import write_model_config

    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "config.yaml.tmp"
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    tmp.replace(run_dir / "config.yaml")
    write_model_config(run_dir, cfg.model)


def prepare_builtin(data: DataConfig, data_dir: Path) -> dict[str, Path]:
    """Generate the built-in task and its tokenizer into ``data_dir`` once (rank 0)."""
    from prime_mcore.data.builtin_task import write_builtin_task
    from prime_mcore.data.tokenizer import build_builtin_tokenizer

    paths = {k: data_dir / f"{k}.parquet" for k in
             ("rl_train", "rl_val", "rl_test", "sft_train", "sft_val")}
    paths["tokenizer"] = data_dir / BUILTIN_TOKENIZER
    stamp = data_dir / "builtin.json"
    spec = {"seed": data.seed, "n": [data.builtin_num_train, data.builtin_num_val,
                                     data.builtin_num_test],
            "ops": list(data.builtin_num_ops), "operands": list(data.builtin_operands),
            "slip": [data.builtin_slip_rate, data.builtin_slip_mode]}
    if is_rank0() and (not stamp.exists() or json.loads(stamp.read_text()) != spec):
        write_builtin_task(data_dir, data.seed, data.builtin_num_train, data.builtin_num_val,
                           data.builtin_num_test, slip_rate=data.builtin_slip_rate,
                           slip_mode=data.builtin_slip_mode, num_ops=tuple(data.builtin_num_ops),
                           lo=data.builtin_operands[0], hi=data.builtin_operands[1])
        build_builtin_tokenizer(paths["tokenizer"], seed=data.seed)
        stamp.write_text(json.dumps(spec))
    barrier()
    return paths


def load_examples(files: Sequence[str | Path], *, skip_bad_rows: bool,
                  system_prompt: str | None) -> list[RLExample]:
    if not files:
        raise ValueError("data.train_files is empty: name Eurus-2-RL-Data-style parquet files "
                         "or use data=builtin")
    result = read_rl_parquet([str(f) for f in files], skip_bad_rows=skip_bad_rows)
    if result.num_skipped:
        log.warning("skipped %d malformed rows in %s", result.num_skipped, list(files))
    examples = list(result.examples)
    if system_prompt is not None:
        examples = [ex.with_system_prompt(system_prompt) for ex in examples]
    return examples


class PromptTokenizer:
    """Chat-templated prompt ids, cached per example, with the length limit enforced."""

    def __init__(self, tokenizer: Any, max_prompt_length: int) -> None:
        self.tok, self.max_len = tokenizer, max_prompt_length
        self._cache: dict[int, list[int]] = {}

    def ids(self, messages: list[dict], key: int | None = None) -> list[int]:
        if key is not None and key in self._cache:
            return self._cache[key]
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if len(ids) > self.max_len:
            # keep the end (the question and the generation prompt) like a left truncation
            log.warning("prompt of %d tokens truncated to rollout.max_prompt_length=%d",
                        len(ids), self.max_len)
            ids = ids[-self.max_len:]
        if key is not None:
            self._cache[key] = ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def init_weights(engine, model: ModelConfig) -> str:
    """Load the starting weights into an engine; returns where they came from."""
    from prime_mcore.convert.engine_io import load_hf_into_engine

    if model.load_path:
        engine.load(model.load_path, weights_only=True)
        return model.load_path
    if model.hf_path:
        load_hf_into_engine(engine, model, model.hf_path)
        return model.hf_path
    return "random init"


def hf_special_ids(tokenizer: Any) -> dict[str, int]:
    out = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            out[key] = int(value)
    return out


def dataclass_dict(obj: Any) -> dict:
    return asdict(obj)


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
