"""Layout equivalence of the Megatron-Core engine on CPU, with real torchrun gloo processes.

A world-1 run in this process writes the references (checkpoints, log-probs, train steps for
both normalizers); one torchrun per group of layouts then measures the max abs differences
against them:

- log-probs after loading the world-1 checkpoint (tolerance 1e-5);
- train steps on the same global batches (2 with the token normalizer, 1 with the sequence
  one, which adds an entropy bonus: TP splits the vocabulary the entropy sums over): loss,
  grad norm, lr and the loss_fn metrics, and every full weight after each (1e-5);
  the sequence step runs as ``train_step_and_logprobs``, whose log-probs must equal the
  world-1 ``logprobs`` of that batch before the step (1e-5);
- resume: a step-1 checkpoint saved at one layout (with optimizer state), loaded at this
  one, trained one more step, against the uninterrupted world-1 run (1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist._worker_engine import LAYOUTS, STEPS, reference

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker_engine.py")
TOLERANCE = {"logprobs": 1e-5, "train_logprobs": 1e-5, "metrics": 1e-5, "weights": 1e-5, "resume": 1e-6}
GROUPS = {2: ["tp2", "pp2", "pp2vpp2", "dp2_plain"], 4: ["tp2pp2", "dp2pp2"]}


def _torchrun(nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # 4 ranks share 2 cores
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(WORKER), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")


def _expected_keys(layouts: list[str]) -> set[str]:
    keys, source = set(), {"qwen2": "world1", "llama": "world1"}
    for name in layouts:
        kwargs, archs = LAYOUTS[name]
        for arch in archs:
            base = f"{name}/{arch}"
            keys.update({f"{base}/logprobs", f"{base}/train_logprobs"})
            keys.update(f"{base}/{norm}/step{step}/{kind}" for norm, steps in STEPS.items()
                        for step in range(steps) for kind in ("metrics", "weights"))
            resumed_from = source[arch] if kwargs.get("use_distributed_optimizer", True) else name
            keys.add(f"{base}/resume_from_{resumed_from}")
            if kwargs.get("use_distributed_optimizer", True):
                source[arch] = name
    return keys


def _tolerance(key: str) -> float:
    kind = key.rsplit("/", 1)[1]
    return TOLERANCE["resume" if kind.startswith("resume") else kind]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    from prime_mcore.engine import destroy_distributed

    out = tmp_path_factory.mktemp("engine_layouts")
    try:
        reference(out)
    finally:
        destroy_distributed()
    return out


@pytest.mark.parametrize("nproc", sorted(GROUPS))
def test_layouts_equal_world1(references: Path, nproc: int) -> None:
    layouts = GROUPS[nproc]
    _torchrun(nproc, "--out", str(references), "--layouts", ",".join(layouts))
    results = json.loads((references / f"results_{'_'.join(layouts)}.json").read_text())
    assert set(results) == _expected_keys(layouts)
    too_far = {k: v for k, v in results.items() if not v <= _tolerance(k)}
    assert not too_far, f"max abs differences above tolerance: {too_far}"
    print(f"\nworld {nproc}: max diff {max(results.values()):.2e} over {len(results)} checks")
