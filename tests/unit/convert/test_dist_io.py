"""Our dist-checkpoint writer/reader against the engine itself (world of 1, in process).

- the keys, shapes and extra-state objects equal those of a checkpoint the engine saves;
- ``Engine.load`` (the RL/SFT start path, ``model.load_path``) accepts ours, and its
  log-probs equal HF's;
- a checkpoint the engine saved (random init, bf16) converts to HF tensors equal to the
  engine's own ``export_weights``.
"""

import json
import pickle
from dataclasses import replace

import pytest
import torch

from prime_mcore.config import ParallelConfig
from prime_mcore.convert import dist_io
from prime_mcore.convert.dist_io import read_model_config, write_model_config
from prime_mcore.convert.engine_io import engine_hf_tensors
from prime_mcore.convert.pipeline import dist_to_hf, hf_to_dist

from .tiny import hf_tensors, make_hf_dir, tiny_model


@pytest.fixture
def world1():
    from prime_mcore.engine import destroy_distributed

    yield
    destroy_distributed()


def _reference(ckpt):
    from prime_mcore.engine import build_engine

    cfg = read_model_config(ckpt / dist_io.MODEL_CONFIG)
    return build_engine(cfg, ParallelConfig(), None, role="reference", seed=1)


def _storage(ckpt):
    md = pickle.loads((ckpt / "dist" / ".metadata").read_bytes()).state_dict_metadata
    return {k: (tuple(v.size), v.properties.dtype) if hasattr(v, "size") else "bytes"
            for k, v in md.items()}


@pytest.mark.parametrize("case", ["qwen2_tied_gqa", "llama_untied_gqa"])
def test_engine_loads_ours_and_saves_the_same_keys(tmp_path, world1, case):
    model = tiny_model(case)
    hf = tmp_path / "hf"
    model.save_pretrained(hf)
    stats: dict[str, int] = {}
    ckpt = hf_to_dist(hf, tmp_path / "ckpt", stats=stats)
    # the weights are copied in the kernel (all but pieces under 4 KiB, such as this tiny
    # model's norms); metadata and the vocabulary padding are written
    weights = sum(t.numel() * t.element_size() for t in hf_tensors(hf).values())
    assert 0.99 * weights < stats["copied"] <= weights and stats["written"] < weights / 2
    engine = _reference(ckpt)
    engine.save(tmp_path / "saved", step=3)
    assert _storage(ckpt) == _storage(tmp_path / "saved")

    step, user_data = engine.load(ckpt, weights_only=True)
    assert step == 0 and user_data["converted_from"] == str(hf.resolve())
    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "response_mask": torch.ones(3, 19, dtype=torch.long)}
    logp = engine.logprobs(batch, micro_batch_size=3)
    with torch.no_grad():
        ref = torch.log_softmax(model(ids).logits.float(), -1)[:, :-1]
    ref = ref.gather(-1, ids[:, 1:, None])[..., 0]
    assert float((logp - ref).abs().max()) < 1e-4
    # a full (not weights-only) load works too: there is no RNG state, none is restored
    assert engine.load(ckpt)[0] == 0


def test_engine_saved_checkpoint_converts_to_its_weights(tmp_path, world1):
    from prime_mcore.engine import build_engine

    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1")
    cfg = read_model_config(hf_to_dist(hf, tmp_path / "c") / dist_io.MODEL_CONFIG)
    cfg = replace(cfg, params_dtype="bf16")  # what training saves: bf16 weights
    engine = build_engine(cfg, ParallelConfig(), None, role="reference", seed=5)
    run = tmp_path / "run"
    engine.save(run / "checkpoints" / "step_1" / "policy", step=1)
    write_model_config(run, cfg)  # found up to 3 parents above the checkpoint
    stats: dict[str, int] = {}
    out = dist_to_hf(run / "checkpoints" / "step_1" / "policy", tmp_path / "back", stats=stats)
    got = hf_tensors(out)
    assert stats["written"] == 0 and stats["copied"] == sum(t.nbytes for t in got.values())
    want = dict(engine_hf_tensors(engine, cfg))
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert got[name].dtype == torch.bfloat16 and torch.equal(got[name], t), name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["architectures"] == ["Qwen2ForCausalLM"]
