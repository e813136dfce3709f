"""torchrun worker of test_engine_dist.py: one launch runs a group of layouts in sequence.

``reference()`` (world 1; the test calls it in-process) writes, per architecture, the initial
checkpoint, reference log-probs, the metrics and full weights of the train steps of each
normalizer, and a checkpoint after the first token-normalized step (optimizer included).

``main()`` (torchrun, world N) rebuilds the process groups for each layout in ``--layouts``
and measures, against the references: log-probs after loading the initial checkpoint; the
train steps of each normalizer; and a resume, i.e. load a step-1 checkpoint saved at another
layout (the world-1 one for the first layout, the previous layout's afterwards), train step 2
and compare with the uninterrupted run. Rank 0 writes the max abs differences as JSON.

Megatron is imported inside functions, keeping this module cheap for the test to import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tests.unit.engine.cases import (
    LOSSES,
    MODELS,
    OPTIM,
    TOTAL_STEPS,
    make_batch,
    sequence_entropy_loss,
)

SEED = 7
STEPS = {"token": 2, "sequence": 1}  # token: 2 steps, the second one is the resume reference
LOGP_TEMPERATURE = 0.8
BOTH, QWEN2, LLAMA = ("qwen2", "llama"), ("qwen2",), ("llama",)
# The sequence-normalized step carries an entropy bonus: TP splits the vocabulary, so the
# entropy's all-reduces and their gradients are checked at every layout.
STEP_LOSSES = {"token": (LOSSES["token"], {}), "sequence": (sequence_entropy_loss,
                                                            {"entropy": True})}
METRICS = {"token": ("loss", "grad_norm", "lr", "clipfrac"),
           "sequence": ("loss", "grad_norm", "lr", "clipfrac", "entropy")}
# name -> (ParallelConfig kwargs, architectures); DP = world / (tp * pp). Both architectures
# where tying, bias or depth matter (TP shards the QKV bias, PP splits tied embeddings).
LAYOUTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "world1": ({}, BOTH),
    "tp2": ({"tp": 2}, BOTH),
    "pp2": ({"pp": 2}, BOTH),
    "dp2_plain": ({"use_distributed_optimizer": False}, QWEN2),  # plain DDP all-reduce
    "pp2vpp2": ({"pp": 2, "vpp": 2}, LLAMA),  # 4 layers: 2 stages x 2 virtual chunks
    "tp2pp2": ({"tp": 2, "pp": 2}, BOTH),
    "dp2pp2": ({"pp": 2}, QWEN2),  # sharded optimizer; resumes TP2xPP2's tied save (fix 4)
}


def _batches() -> tuple[dict, list[dict]]:
    logp_batch = make_batch(rows=7, prompt=6, response=8, seed=1)  # 7: exercises row padding
    train = [make_batch(rows=8, prompt=6, response=8, seed=s) for s in (2, 3)]
    return logp_batch, train


def _weights(engine) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return dict(engine.export_weights())


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _engine(arch: str, parallel):  # type: ignore[no-untyped-def]
    from prime_mcore.engine import build_engine

    return build_engine(MODELS[arch], parallel, OPTIM, role="policy", seed=SEED,
                        total_steps=TOTAL_STEPS)


def reference(out: Path) -> None:
    """World-1 references (runs in any process: the test calls it in-process)."""
    from prime_mcore.config import ParallelConfig

    logp_batch, train = _batches()
    for arch in MODELS:
        root = out / arch
        engine = _engine(arch, ParallelConfig())
        engine.save(root / "init", step=0)
        ref: dict = {"logp": engine.logprobs(logp_batch, micro_batch_size=2,
                                             temperature=LOGP_TEMPERATURE)}
        for norm, (loss_fn, kw) in STEP_LOSSES.items():
            engine = _engine(arch, ParallelConfig())
            engine.load(root / "init")
            if norm == "sequence":  # the log-probs train_step_and_logprobs must return
                ref["train_logp"] = engine.logprobs(train[0], micro_batch_size=4)
            for step, batch in enumerate(train[:STEPS[norm]]):
                ref[f"{norm}/metrics/{step}"] = engine.train_step(
                    loss_fn, batch, micro_batch_size=4, normalizer=norm, **kw)
                ref[f"{norm}/weights/{step}"] = _weights(engine)
                if norm == "token" and step == 0:
                    engine.save(root / "step1_world1", step=1, user_data={"layout": "world1"})
        torch.save(ref, root / "ref.pt")


def _compare_layout(name: str, arch: str, out: Path, source: str, results: dict) -> None:
    """Measure one layout of one architecture; ``source`` names the step-1 checkpoint to
    resume from (``name`` itself: the one this call saves)."""
    from prime_mcore.config import ParallelConfig

    parallel = ParallelConfig(**LAYOUTS[name][0])
    root = out / arch
    ref = torch.load(root / "ref.pt", weights_only=False)
    logp_batch, train = _batches()
    key = f"{name}/{arch}"

    engine = _engine(arch, parallel)
    # the initial checkpoint holds DistributedOptimizer state (zeros), loadable only by that kind
    engine.load(root / "init", weights_only=not parallel.use_distributed_optimizer)
    logp = engine.logprobs(logp_batch, micro_batch_size=2, temperature=LOGP_TEMPERATURE)
    results[f"{key}/logprobs"] = float((logp - ref["logp"]).abs().max())
    init = _weights(engine)

    for norm, (loss_fn, kw) in STEP_LOSSES.items():
        engine = _engine(arch, parallel)  # fresh optimizer: the same state as the checkpoint's
        engine.load_state(init.items())
        for step, batch in enumerate(train[:STEPS[norm]]):
            if norm == "sequence" and step == 0:  # the PRM's single-forward step
                metrics, logp = engine.train_step_and_logprobs(
                    loss_fn, batch, micro_batch_size=4, normalizer=norm, **kw)
                results[f"{key}/train_logprobs"] = float((logp - ref["train_logp"]).abs().max())
            else:
                metrics = engine.train_step(loss_fn, batch, micro_batch_size=4, normalizer=norm,
                                            **kw)
            want = ref[f"{norm}/metrics/{step}"]
            results[f"{key}/{norm}/step{step}/metrics"] = max(
                abs(metrics[k] - want[k]) for k in METRICS[norm])
            results[f"{key}/{norm}/step{step}/weights"] = _max_diff(
                _weights(engine), ref[f"{norm}/weights/{step}"])
            if norm == "token" and step == 0:
                engine.save(root / f"step1_{name}", step=1, user_data={"layout": name})

    engine = _engine(arch, parallel)
    step, user_data = engine.load(root / f"step1_{source}")
    assert (step, user_data) == (1, {"layout": source}), (step, user_data)
    engine.train_step(LOSSES["token"], train[1], micro_batch_size=4, normalizer="token")
    results[f"{key}/resume_from_{source}"] = _max_diff(_weights(engine), ref["token/weights/1"])


def compare(out: Path, layouts: list[str], source: str) -> None:
    import torch.distributed as dist

    results: dict[str, float] = {}
    previous = dict.fromkeys(MODELS, source)  # per arch: the layout of the last step-1 save
    for name in layouts:
        kwargs, archs = LAYOUTS[name]
        for arch in archs:
            if kwargs.get("use_distributed_optimizer", True):
                _compare_layout(name, arch, out, previous[arch], results)
                previous[arch] = name
            else:  # optimizer checkpoints do not convert between the two optimizer kinds
                _compare_layout(name, arch, out, name, results)
    if dist.get_rank() == 0:
        (out / f"results_{'_'.join(layouts)}.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layouts", required=True, help="comma-separated names of LAYOUTS")
    parser.add_argument("--source", default="world1", help="layout of the first resume")
    args = parser.parse_args()
    from prime_mcore.engine import destroy_distributed

    try:
        compare(args.out, args.layouts.split(","), args.source)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
