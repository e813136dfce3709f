"""A small byte-level BPE tokenizer for the built-in task, trained with ``tokenizers``.

Digits are always single tokens (the pre-tokenizer isolates each digit, as Qwen2's does),
which a tiny model needs to learn column arithmetic. Special tokens: ``<|endoftext|>``,
``<|im_start|>``, ``<|im_end|>`` (eos, ends every turn) and ``<|pad|>``. The result is an
HF ``PreTrainedTokenizerFast`` carrying the ChatML template, so the rest of the code treats
it like any Qwen tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prime_mcore.data.prompts import ACTION_SYSTEM_PROMPT, CHATML_TEMPLATE, CODE_SUFFIX

__all__ = [
    "SPECIAL_TOKENS",
    "train_builtin_tokenizer",
    "builtin_corpus",
    "build_builtin_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
]

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
# Qwen2's split (words with one leading non-letter, single digits, punctuation runs, newline
# runs, spaces), plus action tags like " [ADVANCE]\n" kept whole and one space allowed after
# punctuation ("# "), which shortens the seven-action traces. Single digits (\p{N}) stay.
_SPLIT = (r" ?\[[A-Z]+\][\r\n]*|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+ ?[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_builtin_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """Train a byte-level BPE on ``texts`` and wrap it as a PreTrainedTokenizerFast with
    eos ``<|im_end|>``, pad ``<|pad|>`` and CHATML_TEMPLATE. Special tokens get ids 0-3 and
    the 256 byte tokens follow, so any text encodes; ``vocab_size`` must exceed 260."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges (> 260 needed)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>",
        unk_token=None, bos_token=None, chat_template=CHATML_TEMPLATE,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>"],
        model_max_length=4096, padding_side="left", clean_up_tokenization_spaces=False)


def builtin_corpus(seed: int, n_problems: int = 2000) -> list[str]:
    """Training text for the tokenizer: ChatML-rendered prompts and responses of the
    built-in task. The action system prompt and code suffix appear once only: the task's
    prompts leave them out, so merges go to the task's own words."""
    from prime_mcore.data.builtin_task import generate_problems, make_sft_rows

    texts = [ACTION_SYSTEM_PROMPT, CODE_SUFFIX]
    problems = generate_problems(seed, n_problems)
    for row in make_sft_rows(problems, slip_rate=0.3, slip_mode="uniform", seed=seed):
        turns = [*row.prompt, {"role": "assistant", "content": row.response}]
        texts.append("".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                             for m in turns))
    return texts


def build_builtin_tokenizer(
    out_dir: str | Path | None = None, seed: int = 0, vocab_size: int = 512
) -> Any:
    """Train the built-in task's tokenizer from ``seed`` (same seed, same tokenizer.json,
    byte for byte) and save it to ``out_dir`` when given. Returns the tokenizer."""
    tok = train_builtin_tokenizer(builtin_corpus(seed), vocab_size=vocab_size)
    if out_dir is not None:
        save_tokenizer(tok, out_dir)
    return tok


def save_tokenizer(tok: Any, out_dir: str | Path) -> Path:
    """Save as an HF tokenizer folder (tokenizer.json, tokenizer_config.json with the chat
    template); ``load_tokenizer`` reads it back anywhere (``AutoTokenizer`` only where no
    model config.json lies next to it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    return out


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | Path) -> Any:
    """Load a tokenizer folder (built-in or any HF one, e.g. Qwen2.5's).

    A folder saved by ``save_tokenizer`` (tokenizer class "TokenizersBackend") loads as
    exactly its tokenizer.json. ``AutoTokenizer`` would not: next to a model config.json (an
    HF export of a qwen2 policy) it picks Qwen2Tokenizer, which swaps in Qwen2's
    pre-tokenizer and splits the built-in task's ``[ACTION]`` markers differently."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(path) / "tokenizer_config.json"
    if config.is_file():
        cls = json.loads(config.read_text()).get("tokenizer_class")
        if cls in _GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))
