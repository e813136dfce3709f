"""HF <-> Megatron-Core checkpoints, shared by tools/convert and weight sync to vLLM.

``mapping`` (names, shapes, configs; no I/O), ``hf_io``/``hf_write`` (safetensors),
``dist_io``/``dist_rw`` (the engine's dist checkpoint, written and read without Megatron),
``zerocopy`` (kernel copies), ``pipeline`` (the two conversions), ``cli`` (their command
lines), ``engine_io`` (an engine's weights to and from HF). Only ``mapping`` is imported here:
weight sync needs nothing else.
"""

from prime_mcore.convert.mapping import (
    ConversionError,
    Layout,
    expected_hf_names,
    expected_mcore_names,
    hf_config_from_model,
    hf_to_mcore,
    mcore_to_hf,
    model_config_from_hf,
    padded_vocab_size,
)

__all__ = [
    "ConversionError",
    "Layout",
    "expected_hf_names",
    "expected_mcore_names",
    "hf_config_from_model",
    "hf_to_mcore",
    "mcore_to_hf",
    "model_config_from_hf",
    "padded_vocab_size",
]
