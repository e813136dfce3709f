"""Built-in tokenizer: exact round trip, single-digit tokens, ChatML, determinism."""

from __future__ import annotations

import statistics

import pytest

from prime_mcore.data.builtin_task import generate_problems, make_sft_rows
from prime_mcore.data.prompts import ACTION_SYSTEM_PROMPT, CODE_SUFFIX, build_messages
from prime_mcore.data.tokenizer import (
    SPECIAL_TOKENS,
    build_builtin_tokenizer,
    load_tokenizer,
    train_builtin_tokenizer,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    return build_builtin_tokenizer(out, seed=0), out


@pytest.fixture(scope="module")
def rows():
    return make_sft_rows(generate_problems(99, 300), slip_rate=0.3, seed=1)


def test_round_trips_texts_exactly(built, rows):
    tok, _ = built
    texts = [r.response for r in rows] + [r.prompt[0]["content"] for r in rows]
    texts += [ACTION_SYSTEM_PROMPT, CODE_SUFFIX, "Unseen: Zürich ∑ 😀 tabs\tand  spaces\n"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text


def test_digits_are_single_tokens(built):
    tok, _ = built
    with_digit = [t for t in tok.get_vocab() if any(c in "0123456789" for c in t)]
    assert sorted(with_digit) == list("0123456789")
    ids = tok.encode("Tom has 1234 apples: 85-19=66", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("123485196" "6")


def test_specials_and_vocab(built):
    tok, _ = built
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|pad|>")
    assert (tok.eos_token_id, tok.pad_token_id) == (2, 3)
    assert 300 <= len(tok) <= 600


def test_chat_template_renders_chatml(built):
    tok, out = built
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        expected + "<|im_start|>assistant\n")
    reloaded = load_tokenizer(out)
    assert reloaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) \
        == expected + "<|im_start|>assistant\n"
    text = "Next action: [ADVANCE]\n# 37+48=85"
    assert reloaded.encode(text) == tok.encode(text)
    assert reloaded.eos_token_id == 2 and reloaded.pad_token_id == 3


def test_task_sequences_are_short(built, rows):
    tok, _ = built
    prompt_lens = [len(tok.apply_chat_template(r.prompt, add_generation_prompt=True,
                                               return_dict=False)) for r in rows]
    response_lens = [len(tok.encode(r.response)) + 1 for r in rows]  # + eos
    assert statistics.mean(prompt_lens) < 55 and max(prompt_lens) < 64
    assert statistics.mean(response_lens) < 64 and max(response_lens) < 80
    # the action tags are single tokens
    assert len(tok.encode("[ASSESS]\n")) == 1 and len(tok.encode("[OUTPUT]\n\n")) == 1


def test_training_is_deterministic(built, tmp_path):
    _, out = built
    build_builtin_tokenizer(tmp_path, seed=0)
    assert (tmp_path / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()


def test_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_builtin_tokenizer(["a b"], vocab_size=200)


def test_math_prompt_with_system_prompt_still_encodes(built):
    tok, _ = built
    ids = tok.apply_chat_template(build_messages("What is 2+2?", "math"),
                                  add_generation_prompt=True, return_dict=False)
    assert tok.decode(ids).startswith("<|im_start|>system\n\nWhen tackling")


def test_loads_the_same_next_to_a_qwen2_model_config(built, rows, tmp_path):
    """An HF export of the policy holds the tokenizer next to a qwen2 config.json; it must
    still tokenize like the tokenizer it was copied from (AutoTokenizer alone picks
    Qwen2Tokenizer there, whose pre-tokenizer splits the [ACTION] markers differently)."""
    import json
    import shutil

    _, tok_dir = built
    export = tmp_path / "export"
    shutil.copytree(tok_dir, export)
    (export / "config.json").write_text(json.dumps({"model_type": "qwen2",
                                                    "architectures": ["Qwen2ForCausalLM"]}))
    plain, exported = load_tokenizer(tok_dir), load_tokenizer(export)
    texts = [r.response for r in rows[:100]]
    assert [exported.encode(t) for t in texts] == [plain.encode(t) for t in texts]
    assert exported.apply_chat_template(rows[0].prompt, tokenize=False) == \
        plain.apply_chat_template(rows[0].prompt, tokenize=False)
