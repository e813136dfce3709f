"""Megatron-Core engine: the only package of prime_mcore that imports ``megatron.core``.

Importing it installs the CPU compatibility layer when CUDA is absent (``cpu_compat``), so
the same calls run on one CPU process, on N gloo processes with TP/PP/DP, and on GPUs.

Interface (every call is collective: all ranks call it with the same arguments)::

    info = init_distributed(parallel, seed=0)          # torchrun / Slurm / world of 1
    policy = build_engine(model, parallel, optim, role="policy", seed=0, total_steps=N)
    ref = build_engine(model, parallel, None, role="reference", seed=0)

    logp = policy.logprobs(batch, micro_batch_size=8, temperature=1.0)  # [B, R], every rank
    metrics = policy.train_step(loss_fn, batch, micro_batch_size=8, normalizer="token")
    policy.save(dir, step=n, user_data={...}); step, user_data = policy.load(dir)
    for name, tensor in policy.export_weights(): ...   # full tensors, every rank
    policy.load_state(named_full_tensors)               # full tensors -> this rank's shards
    CheckpointManager(run_dir / "checkpoints", keep_last=3).save(n, {"policy": policy}, {...})
    destroy_distributed()

Batches are the full global batch on every rank: ``input_ids``/``attention_mask`` [B, P+R]
(left-padded prompt | right-padded response), ``response_mask`` [B, R] and any other [B, ...]
tensors for the loss (``batching.py``). ``micro_batch_size`` counts rows of the global batch
(split over DP). Log-probs come back on the batch's device (a CPU batch gets CPU results
from a GPU engine); the model lives on ``info.device``. The loss normalizer
contract is in ``train_step.py``, checkpoint layout and atomicity in ``checkpoint.py``,
weight names in ``weights.py``.
"""

from prime_mcore.engine import cpu_compat

cpu_compat.enable()  # before any megatron.core import below

from prime_mcore.engine.engine import ROLES, Engine, build_engine  # noqa: E402
from prime_mcore.engine.manager import CheckpointManager  # noqa: E402
from prime_mcore.engine.manifest import CheckpointError  # noqa: E402
from prime_mcore.engine.parallel import (  # noqa: E402
    ParallelInfo,
    destroy_distributed,
    init_distributed,
)
from prime_mcore.engine.rope import enable_fast_rope  # noqa: E402
from prime_mcore.engine.train_step import NORMALIZERS, LossFn  # noqa: E402

enable_fast_rope()  # Megatron's unfused RoPE without its per-layer cos/sin (rope.py)

__all__ = [
    "ROLES",
    "NORMALIZERS",
    "CheckpointError",
    "CheckpointManager",
    "Engine",
    "LossFn",
    "ParallelInfo",
    "build_engine",
    "destroy_distributed",
    "init_distributed",
]
