"""Test helpers: a tiny random Qwen2 checkpoint built at test time, HF reference logprobs.

The tokenizer is a byte-level BPE whose alphabet is printable ASCII plus newline, so any
generated token sequence decodes to plain ASCII (stop strings are then unambiguous). The
model has head_dim 32 (the vLLM CPU attention backend needs >= 32) and a larger init
scale than HF's default so its next-token distributions are peaked: greedy tokens are then
not decided by 1e-6 numeric noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from prime_mcore.rollout import RolloutOutput

CORPUS = [
    "the quick brown fox jumps over the lazy dog.\n",
    "def add(x, y):\n    return x + y\n",
    "hello world, this is a tiny corpus for a tiny tokenizer.\n",
    "Answer: 42. The answer is 42 because 6 * 7 = 42.\n",
] * 20

MAX_POSITIONS = 512

TrainerLogprobs = Callable[[list[list[int]], RolloutOutput, float], torch.Tensor]
"""(prompts, rollout, temperature) -> [B, L] trainer logprobs aligned with rollout.padded().
The HF forward below is today's source; the Megatron engine plugs in here when it lands."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map used by the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_tiny_checkpoint(out: Path, seed: int = 0, tied: bool = False) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    byte_map = _bytes_to_unicode()
    alphabet = [byte_map[b] for b in [10, *range(32, 127)]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=alphabet, limit_alphabet=len(alphabet)))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                     eos_token="<|endoftext|>", pad_token="<|pad|>")
    cfg = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=tied, initializer_range=0.1, eos_token_id=hf_tok.eos_token_id,
        bos_token_id=hf_tok.bos_token_id, pad_token_id=hf_tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    return out


def load_hf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path))


@torch.no_grad()
def hf_forward_logprobs(model, prompts: list[list[int]], rollout: RolloutOutput,
                        temperature: float) -> torch.Tensor:
    """Teacher-forced log_softmax(logits / T) of each sampled token (T=0 counts as 1)."""
    _, _, mask = rollout.padded()
    out = torch.zeros(mask.shape, dtype=torch.float32)
    scale = temperature if temperature > 0 else 1.0
    for row, s in enumerate(rollout.samples):
        prompt = prompts[s.prompt_index]
        ids = torch.tensor([prompt + s.token_ids])
        logits = model(ids).logits[0, len(prompt) - 1:-1].float() / scale
        lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.token_ids)[:, None])
        out[row, :len(s.token_ids)] = lp[:, 0]
    return out


def make_prompts(tokenizer, count: int, min_len: int = 4, max_len: int = 24,
                 seed: int = 0) -> list[list[int]]:
    """Prompts of varied lengths cut from the corpus (left padding gets exercised)."""
    g = torch.Generator().manual_seed(seed)
    ids = tokenizer("".join(CORPUS))["input_ids"]
    prompts = []
    for _ in range(count):
        n = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        start = int(torch.randint(0, len(ids) - n, (1,), generator=g))
        prompts.append(ids[start:start + n])
    return prompts


@contextlib.contextmanager
def swapped_rows(weight: torch.Tensor, a: int, b: int) -> Iterator[None]:
    """Swap two rows of an output embedding (e.g. make EOS take a greedy token's place)."""
    with torch.no_grad():
        weight[[a, b]] = weight[[b, a]]
    try:
        yield
    finally:
        with torch.no_grad():
            weight[[a, b]] = weight[[b, a]]


def train_step(model: torch.nn.Module, prompts: list[list[int]], lr: float = 1e-2) -> None:
    """One real AdamW step (LM loss) on an HF model: the stand-in for an engine step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for p in prompts:
        ids = torch.tensor([p])
        model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
