"""Rollout collection: the accuracy filter with refill keeps K-sample groups contiguous,
surplus prompts are pushed back, and short batches are topped up (counted)."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from prime_mcore.data.builtin_task import make_splits, to_rl_examples
from prime_mcore.data.tokenizer import build_builtin_tokenizer
from prime_mcore.rollout import HFBackend, SamplingParams
from prime_mcore.trainers.collector import PromptSource, RolloutCollector
from prime_mcore.trainers.common import PromptTokenizer

K = 4


class Result:
    def __init__(self, score):
        self.score, self.reason = score, "correct" if score else "wrong"


def parity_verifier(items):
    """Score 1 when the completion has an even number of characters: varied, deterministic."""
    return [Result(float(len(text) % 2 == 0)) for _, text, _ in items]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = build_builtin_tokenizer(tmp_path_factory.mktemp("tok"), seed=0)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
    examples = to_rl_examples(make_splits(0, 64, 4, 4).train, "train")
    return tok, HFBackend(model, tok), examples


def collector(setup, *, batch, low=0.2, high=0.8, rounds=4, source=None):
    tok, backend, examples = setup
    prompts = PromptTokenizer(tok, 128)
    source = source or PromptSource(len(examples), seed=1)
    return source, RolloutCollector(
        examples=examples, prompt_ids=lambda i: prompts.ids(examples[i].prompt, key=i),
        decode=prompts.decode, source=source, backend=backend, verifier=parity_verifier,
        sampling=SamplingParams(max_new_tokens=12), n=K, train_batch_size=batch, low=low,
        high=high, filter_groups=True, filter_truncated=False, oversample_factor=2,
        max_rounds=rounds)


def test_filtered_groups_are_contiguous_and_in_band(setup):
    tok, _, examples = setup
    source, col = collector(setup, batch=4)
    out = col.collect(step=1, seed=0)
    assert len(out.prompt_indices) == 4 and len(out.samples) == 16
    groups = out.scores.view(-1, K).mean(-1)
    filled = int(out.metrics["filter/filled"])
    in_band = (groups >= 0.2) & (groups <= 0.8)
    assert int(in_band.sum()) >= 4 - filled  # every group but the top-ups passed the filter
    for g in range(len(out.prompt_indices)):
        # the K samples of group g come from one generate-call prompt and were scored as a unit
        members = out.samples[g * K:(g + 1) * K]
        assert len({s.prompt_index for s in members}) == 1
        texts = [tok.decode(s.token_ids, skip_special_tokens=True) for s in members]
        assert [float(len(t) % 2 == 0) for t in texts] == out.scores[g * K:(g + 1) * K].tolist()
    # oversampling drew 8 prompts for 4 slots: the passing surplus waits in the buffer
    assert out.metrics["filter/prompts_generated"] >= 8
    passed = round(out.metrics["filter/pass_rate"] * out.metrics["filter/prompts_generated"])
    assert len(source.buffer) == max(0, passed - 4)
    assert set(source.buffer).isdisjoint(out.prompt_indices)


def test_impossible_filter_tops_up_with_failing_groups(setup):
    # no group can have mean accuracy in [0.9, 0.95] with K = 4: every slot is filled
    _, col = collector(setup, batch=3, low=0.9, high=0.95, rounds=2)
    out = col.collect(step=2, seed=0)
    assert out.metrics["filter/filled"] == 3.0 and out.metrics["filter/pass_rate"] == 0.0
    assert len(out.samples) == 12


def test_prompt_source_resumes_exactly():
    a = PromptSource(10, seed=3)
    first = a.take(7)
    a.push_back([first[-1]])
    state = a.state_dict()
    b = PromptSource(10, seed=3)
    b.load_state_dict(state)
    assert a.take(9) == b.take(9)
    c = PromptSource(10, seed=3)
    epoch0 = c.take(10)
    assert sorted(epoch0) == list(range(10)) and c.take(10) != epoch0  # reshuffled per epoch
