"""Data for prime_mcore: Eurus-2-RL-Data parquet (``schema``), the prompt format
(``prompts``), the built-in arithmetic task (``builtin_task``), its tokenizer
(``tokenizer``) and rollout padding (``batching``). Import from the submodules; this package
imports nothing so that light users do not pay for torch or transformers.
"""
