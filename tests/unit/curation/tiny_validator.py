"""A tiny Qwen2 really trained (in seconds, on CPU) to memorise answers to a few prompts.

It stands in for the validator of curation and the teacher of SFT traces. Prompts are the
Eurus-2-RL-Data user turn (the question with the math suffix), without the long action
system prompt, which would make training ten times slower on two cores; the
memorised responses are seven-action traces, some deliberately malformed or wrong, and a
family of "secret code" prompts is answered "I do not know." so that unseen prompts of that
family get no answer. Training runs until every memorised response is reproduced greedily
and its per-token loss is tiny, so sampling at T=1 reproduces it almost surely.
"""

from __future__ import annotations

from pathlib import Path

import torch

from prime_mcore.data.prompts import MATH_SUFFIX
from prime_mcore.data.schema import RLExample


def trace(steps: list[tuple[str, str]]) -> str:
    """Action blocks [(action, step text)], each announcing the next."""
    out = []
    for i, (action, text) in enumerate(steps):
        block = f"[{action}]\n\n# {text}"
        if i + 1 < len(steps):
            block += f"\n\nNext action: [{steps[i + 1][0]}]"
        out.append(block)
    return "\n\n".join(out)


def good(start: str, calc: str, answer: str) -> str:
    return trace([("ASSESS", start), ("ADVANCE", calc),
                  ("OUTPUT", f"The answer is \\boxed{{{answer}}}.")])


SOLVED = {  # question -> (memorised response, its answer)
    "Tom has 12 apples and buys 30 more. How many apples does he have?":
        (good("Tom starts with 12 apples.", "12 + 30 = 42.", "42"), "42"),
    "Anna has 9 coins and finds 8 more. How many coins does she have?":
        (good("Anna starts with 9 coins.", "9 + 8 = 17.", "17"), "17"),
    "Ben has 50 cards and sells 21. How many cards does he have?":
        (good("Ben starts with 50 cards.", "50 - 21 = 29.", "29"), "29"),
}
MALFORMED = {  # question -> (memorised response, violation kind, ground truth)
    "Mia has 7 shells and finds 6 more. How many shells does she have?": (
        trace([("ADVANCE", "7 + 6 = 13."), ("OUTPUT", "So \\boxed{13}.")]),
        "not_start_assess", "13"),
    "Sam has 20 books and sells 5. How many books does he have?": (
        trace([("ASSESS", "Sam has 20 books."), ("ADVANCE", "20 - 5 = 15."),
               ("OUTPUT", "He has 15 books.")]), "missing_boxed", "15"),
    "Lily has 4 pencils and gets 4 more. How many pencils does she have?": (
        trace([("ASSESS", "Lily has 4 pencils."), ("THINK", "4 + 4 = 8."),
               ("OUTPUT", "So \\boxed{8}.")]), "unknown_action", "8"),
    "Max has 30 marbles and loses 3. How many marbles does he have?": (
        "[ASSESS]\n\n# Max has 30 marbles.\n\nNext action: [ADVANCE]\n\n[ADVANCE]\n\n"
        "# 30 - 3 = 27, so \\boxed{27}.", "no_output", "27"),
    "Zoe has 11 stickers and uses 2. How many stickers does she have?": (
        good("Zoe starts with 11 stickers.", "11 - 2 = 8.", "8"), "wrong_answer", "9"),
    "Tom has 60 coins and wins 15 more. How many coins does he have?": (
        trace([("ASSESS", "Tom starts with 60 coins and wins 15 more coins today.")]
              + [("ADVANCE", "We count the coins one by one, slowly: 60, 61, 62, 63.")]
              + [("OUTPUT", "He has \\boxed{75} coins.")]),
        "truncated", "75"),
}
CODE_PROMPT = "Tell me the secret code of box {}."
REFUSAL = "I do not know."
SEEN_BOXES = "ABCDEFGH"
UNSEEN_BOXES = "QRS"
MAX_NEW_TOKENS = 80
"""Every memorised response fits, except the "truncated" one."""


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question + MATH_SUFFIX}]


def example(question: str, truth: str, index: int) -> RLExample:
    return RLExample("numina_synthetic_math", messages(question), "math", truth,
                     {"split": "train", "index": index})


def memory() -> list[tuple[str, str]]:
    pairs = [(q, r) for q, (r, _) in SOLVED.items()]
    pairs += [(q, r) for q, (r, _, _) in MALFORMED.items()]
    pairs += [(CODE_PROMPT.format(b), REFUSAL) for b in SEEN_BOXES]
    return pairs


def _encode(tok, question: str, response: str) -> tuple[list[int], int]:
    ids = tok.apply_chat_template(messages(question), add_generation_prompt=True, tokenize=True)
    prompt = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return prompt + tok(response)["input_ids"] + [tok.eos_token_id], len(prompt)


def train_validator(out: Path, *, max_steps: int = 400, seed: int = 1) -> Path:
    """Train and save (model + tokenizer) to ``out``; returns ``out``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prime_mcore.data.tokenizer import build_builtin_tokenizer, load_tokenizer, save_tokenizer

    # Encode with the tokenizer exactly as the backends load it: load_tokenizer from the
    # folder that also holds the model's config.json (plain AutoTokenizer would pick
    # Qwen2Tokenizer there, whose pre-tokenizer splits these texts differently).
    save_tokenizer(build_builtin_tokenizer(seed=0), out)
    Qwen2Config(vocab_size=512).save_pretrained(out)  # rewritten with the real config below
    tok = load_tokenizer(out)
    rows = [_encode(tok, q, r) for q, r in memory()]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):  # right padding; loss on responses only
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, :len(ids)] = 1
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=192,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: OpenMP threads only contend on a busy machine
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    # Linear decay: a constant 1e-2 memorises fast but its loss spikes now and then.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.02, 1 - s / max_steps))
    for step in range(max_steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9 and loss.item() < 1e-3:
            break
    torch.set_num_threads(threads)
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    (out / "train_loss.txt").write_text(f"{loss.item():.6f} after {step + 1} steps\n")
    check_memorised(out)
    return out


def check_memorised(path: Path) -> None:
    """Reload from disk and teacher-force every memorised response: the argmax must be it."""
    from transformers import AutoModelForCausalLM

    from prime_mcore.data.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    tok = load_tokenizer(path)
    for question, response in memory():
        ids, n_prompt = _encode(tok, question, response)
        with torch.no_grad():
            pred = model(torch.tensor([ids])).logits[0, n_prompt - 1:-1].argmax(-1)
        if pred.tolist() != ids[n_prompt:]:
            raise RuntimeError(f"{path}: the trained validator does not reproduce the response "
                               f"to {question!r} ({(path / 'train_loss.txt').read_text()})")


if __name__ == "__main__":
    # The session fixture trains in a fresh process: a model trained inside the pytest
    # process (same code, same seed) came out unable to reproduce its responses.
    import sys

    train_validator(Path(sys.argv[1]))
