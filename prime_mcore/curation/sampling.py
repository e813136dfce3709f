"""What curation and SFT trace generation share: problems in, N graded responses out.

The model is any HF checkpoint directory, served by the configured rollout backend (vLLM or
transformers); prompts are the rows' chat messages through the tokenizer's chat template.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prime_mcore.config import ModelConfig, RolloutConfig
from prime_mcore.data.schema import RLExample, read_rl_parquet

log = logging.getLogger("prime_mcore")

__all__ = ["load_problems", "answer_key", "Response", "Sampler"]


def load_problems(files: Sequence[str], *, skip_bad_rows: bool, limit: int = 0,
                  system_prompt: str | None = None) -> tuple[list[RLExample], int]:
    """Rows of Eurus-2-RL-Data-style parquet (first ``limit`` when > 0) and the number of bad
    rows skipped; bad rows raise BadRowsError unless ``skip_bad_rows`` (read_rl_parquet)."""
    if not files:
        raise ValueError("data.train_files is empty: name the parquet files to read")
    result = read_rl_parquet(list(files), skip_bad_rows=skip_bad_rows)
    examples = result.examples[:limit] if limit else result.examples
    if system_prompt is not None:
        examples = [ex.with_system_prompt(system_prompt) for ex in examples]
    return examples, result.num_skipped


def answer_key(ability: str, text: str) -> str | None:
    """The normalised final answer (math) or the stripped program (code); None if absent."""
    if ability == "code":
        from prime_mcore.rewards import extract_code

        return extract_code(text).strip() or None
    from prime_mcore.rewards import extract_answer
    from prime_mcore.rewards.normalize import normalize_answer

    answer = extract_answer(text)
    return answer if answer is None else (normalize_answer(answer) or answer)


@dataclass(frozen=True)
class Response:
    """One sampled response: its text and whether it hit the length limit."""

    text: str
    truncated: bool


class Sampler:
    """A model behind a rollout backend: ``sample(problems, seed)`` returns n responses each."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, **backend_kwargs: Any) -> None:
        from prime_mcore.data.tokenizer import load_tokenizer
        from prime_mcore.rollout import SamplingParams, make_backend
        from prime_mcore.trainers.common import PromptTokenizer

        assert model.hf_path is not None
        self.tokenizer = load_tokenizer(model.tokenizer_path or model.hf_path)
        self.prompts = PromptTokenizer(self.tokenizer, rollout.max_prompt_length)
        self.n = rollout.n_samples
        self.sampling = SamplingParams.from_config(rollout)
        self.backend = make_backend(rollout, model.hf_path, **backend_kwargs)

    def sample(self, problems: Sequence[RLExample], seed: int) -> list[list[Response]]:
        """``n`` responses per problem; ``seed`` fixes the draw (same problems, same seed,
        same responses on the same backend)."""
        ids = [self.prompts.ids(ex.prompt) for ex in problems]
        out = self.backend.generate(ids, self.n, self.sampling.replace(seed=seed))
        return [[Response(self.prompts.decode(s.token_ids), s.finish_reason == "length")
                 for s in out.group(i)] for i in range(len(problems))]

    def close(self) -> None:
        self.backend.close()
