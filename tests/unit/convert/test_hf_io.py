"""Safetensors reading/writing without mmap, shard planning, atomic output, size parsing."""

import json
import struct

import pytest
import torch
from safetensors import safe_open

from prime_mcore.convert import ConversionError
from prime_mcore.convert.cli import parse_size
from prime_mcore.convert.hf_io import (
    INDEX,
    SINGLE,
    SafetensorsReader,
    atomic_output,
    iter_hf_tensors,
)
from prime_mcore.convert.hf_write import plan_shards, write_hf_dir

from .tiny import assert_bitwise_equal, hf_tensors, leftovers, make_hf_dir


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 8, generator=gen), "b": torch.randn(16, generator=gen),
            "c": torch.randn(3, 8, generator=gen).to(torch.bfloat16),
            "d": torch.randn(10, 10, generator=gen)}


def test_planned_write_accepts_any_order_and_shards(tmp_path):
    ts = {k: v.float() for k, v in _tensors().items()}
    plan = {k: tuple(v.shape) for k, v in ts.items()}
    out = write_hf_dir(reversed(list(ts.items())), tmp_path / "hf", config={"x": 1},
                       dtype=torch.float32, max_shard_bytes=500, plan=plan)
    index = json.loads((out / INDEX).read_text())
    # 128 + 64 + 96 bytes fit in one 500-byte shard, d (400 bytes) gets the next one
    assert plan_shards({k: (s, torch.float32) for k, s in plan.items()}, 500) == [
        ["a", "b", "c"], ["d"]]
    assert index["weight_map"] == {"a": "model-00001-of-00002.safetensors",
                                   "b": "model-00001-of-00002.safetensors",
                                   "c": "model-00001-of-00002.safetensors",
                                   "d": "model-00002-of-00002.safetensors"}
    assert_bitwise_equal(hf_tensors(out), ts)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert (out.stat().st_mode & 0o777) != 0o700  # not mkdtemp's private mode
    with safe_open(str(out / "model-00001-of-00002.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_planned_write_rejects_surprises(tmp_path):
    ts = _tensors()
    plan = {k: tuple(v.shape) for k, v in ts.items()}
    with pytest.raises(ConversionError, match="'zz' is not in the planned"):
        write_hf_dir([("zz", torch.zeros(1))], tmp_path / "x", config={}, dtype=torch.float32,
                     plan=plan)
    with pytest.raises(ConversionError, match="'a': shape"):
        write_hf_dir([("a", torch.zeros(5))], tmp_path / "x", config={}, dtype=torch.float32,
                     plan=plan)
    with pytest.raises(ConversionError, match="not written exactly once"):
        write_hf_dir([("a", ts["a"])], tmp_path / "x", config={}, dtype=torch.float32,
                     plan=plan)
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_buffered_write_keeps_dtypes(tmp_path):
    ts = _tensors()
    out = write_hf_dir(iter(ts.items()), tmp_path / "hf", config={})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json",
                                                       SINGLE]
    assert_bitwise_equal(hf_tensors(out), ts)
    assert dict(iter_hf_tensors(out)).keys() == ts.keys()


def test_reader_reads_sharded_checkpoints_and_names_problems(tmp_path):
    hf = make_hf_dir(tmp_path / "hf", "qwen2_untied_gqa1", max_shard_size="100KB")
    shards = sorted(hf.glob("model-*.safetensors"))
    assert len(shards) > 1 and (hf / INDEX).is_file()
    reader = SafetensorsReader(hf)
    assert_bitwise_equal({n: reader.read(n) for n in reader.tensors}, hf_tensors(hf))
    with pytest.raises(ConversionError, match="'nope' is missing"):
        reader.read("nope")
    shards[1].rename(tmp_path / "moved")
    with pytest.raises(ConversionError, match=f"missing shard.*{shards[1].name}"):
        SafetensorsReader(hf)
    (tmp_path / "moved").rename(shards[1])
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[:-10])
    with pytest.raises(ConversionError, match=f"truncated shard {shards[0]}"):
        SafetensorsReader(hf)
    shards[0].write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(ConversionError, match="header length"):
        SafetensorsReader(hf)


def test_atomic_output(tmp_path):
    out = tmp_path / "out"
    with atomic_output(out, force=False) as tmp:
        (tmp / "f").write_text("1")
    assert (out / "f").read_text() == "1"
    with pytest.raises(FileExistsError, match="--force"):
        with atomic_output(out, force=False):
            pass
    with pytest.raises(RuntimeError), atomic_output(out, force=True) as tmp:
        (tmp / "f").write_text("2")
        raise RuntimeError("boom")
    assert (out / "f").read_text() == "1" and leftovers(tmp_path) == []
    with atomic_output(out, force=True) as tmp:
        (tmp / "g").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["g"] and leftovers(tmp_path) == []


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("1GiB") == 1 << 30
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1234") == 1234
    with pytest.raises(Exception, match="bad size"):
        parse_size("lots")
