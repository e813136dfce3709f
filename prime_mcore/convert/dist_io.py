"""The engine's checkpoint format, written and read tensor by tensor without Megatron.

An engine checkpoint (``prime_mcore/engine/checkpoint.py``) is a directory with
``dist/`` (Megatron ``dist_checkpointing`` in its ``torch_dist`` backend, i.e. a
``torch.distributed.checkpoint`` directory plus ``metadata.json`` and ``common.pt``) and the
manifest ``prime_mcore.json`` (every file with size and CRC32, written last). Megatron stores
the model by *global* tensor keys: each layer parameter is one tensor with a leading layer
axis (``decoder.layers.self_attention.linear_qkv.weight`` is [L, qkv, H]), the local spec's
norms under their Transformer Engine names, the vocabulary padded; so one file written here,
with one chunk per layer, loads at any TP x PP x VPP layout (DCP reads sub-boxes of chunks).

Building the engine would hold the whole model in memory (12 GB for a 3B model in fp32):
``write_dist_checkpoint`` instead hands DCP a save plan of row chunks (``mapping.Piece``)
whose tensors are produced lazily, one at a time, as zero-copy views of the HF files that
the stream kernel-copies (``zerocopy``); ``DistReader`` locates the stored bytes of any row
range (a meta-device ``torch.load`` of the record gives its offset) for the same kind of
copy, and reads through DCP where the stored chunks split the columns (row-parallel
layers saved at TP > 1). Tests check that the keys equal those of a checkpoint saved by the
engine, and that the engine loads ours at TP=1, TP=2 and PP=2.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from prime_mcore import manifest as fmt
from prime_mcore.config import ModelConfig
from prime_mcore.convert.mapping import ConversionError

MANIFEST, MANIFEST_FORMAT = fmt.MANIFEST, fmt.FORMAT  # the engine's format (prime_mcore.manifest)
MODEL_CONFIG = "model_config.json"
HF_CONFIG = "hf_config.json"
DIST = "dist"
# What Megatron's dist_checkpointing.save writes next to the DCP files (torch_dist backend).
_DIST_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                  "common_backend": "torch", "common_backend_version": 1}
_OPTIM_META = {"distrib_optim_sharding_type": "fully_reshardable"}
# The local spec stores its pre-norms under Transformer Engine's names (checkpoint-compatible).
_CKPT_NAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
               "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}
_EXTRA_STATE_MODULES = ("self_attention.linear_proj", "self_attention.linear_qkv",
                        "mlp.linear_fc1", "mlp.linear_fc2")
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def checkpoint_key(name: str) -> tuple[str, int | None]:
    """Canonical full mcore name -> (checkpoint key, layer index or None)."""
    m = _LAYER.fullmatch(name)
    if m is None:
        return name, None
    rest = _CKPT_NAMES.get(m.group(2), m.group(2))
    return f"decoder.layers.{rest}", int(m.group(1))


# ---------------------------------------------------------------- model config & manifest


def write_model_config(root: Path, cfg: ModelConfig) -> None:
    """The architecture as JSON (ModelConfig fields), so a checkpoint is self-describing."""
    (root / MODEL_CONFIG).write_text(json.dumps(asdict(cfg), indent=1, sort_keys=True))


def find_model_config(ckpt: Path) -> Path | None:
    """model_config.json in the checkpoint or up to 3 parents (run_dir/checkpoints/step/role)."""
    for d in (ckpt, *list(ckpt.resolve().parents)[:3]):
        if (d / MODEL_CONFIG).is_file():
            return d / MODEL_CONFIG
    return None


def read_model_config(path: Path) -> ModelConfig:
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in raw.items() if k in known})
    except (OSError, ValueError, TypeError) as err:
        raise ConversionError(f"bad {path}: {err}") from err


def write_manifest(root: Path, info: dict[str, Any],
                   known: dict[str, tuple[int, int]] | None = None) -> None:
    """Checksum every file under ``root`` and write the manifest (last: its presence marks a
    complete checkpoint), in the engine's format. ``known``: (size, CRC32) already computed
    for some relative paths (used when the size still matches)."""
    known = known or {}
    entries = {}
    for name in fmt.list_files(root):
        size, crc = known.get(name, (-1, None))
        entries[name] = fmt.entry(root / name, crc if size == os.path.getsize(root / name)
                                  else None)
    fmt.write_body(root, info, entries)


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, after checking that every listed file exists with its size (the CRCs are
    checked by ``verify_crcs``, which reads everything)."""
    body = fmt.parse(root, ConversionError)
    for name, entry in body["files"].items():
        if (problem := fmt.check_file(root, name, entry, crc=False)) is not None:
            raise ConversionError(f"{problem} (listed in {root / MANIFEST})")
    return body


def verify_crcs(root: Path, manifest: dict[str, Any]) -> None:
    """ConversionError naming the first file whose CRC32 differs from the manifest's."""
    for name, entry in sorted(manifest["files"].items()):
        if fmt.crc32(root / name) != entry["crc32"]:
            raise ConversionError(f"{root / name} is corrupt: CRC32 mismatch")
