"""HF <-> Megatron-Core checkpoint mapping, shared by tools/convert and weight sync."""

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
