"""Converted checkpoints at real TP=2 and PP=2 layouts (torchrun, gloo, 2 processes).

hf_to_mcore writes layout-free checkpoints (``--tp`` only sets the vocabulary padding): here
two engines at TP=2 and PP=2 load them and must reproduce HF's logits and log-probs
(< 1e-4, fp32) and its weights bit for bit; the checkpoints those engines then save (one
file per rank, TP-split chunks) convert back to HF bit for bit (mcore_to_hf at any layout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prime_mcore.convert import Layout, mcore_to_hf, model_config_from_hf
from prime_mcore.convert.dist_io import write_model_config
from prime_mcore.convert.pipeline import dist_to_hf, hf_to_dist
from tests.unit.convert.tiny import assert_bitwise_equal, hf_tensors, tiny_model

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_worker_convert.py")
CASES = ("qwen2_tied_gqa", "llama_untied_gqa")  # tied + bias + GQA; untied, 4 layers
TOL = 1e-4


def _prepare(work: Path, case: str) -> None:
    model = tiny_model(case)
    d = work / case
    model.save_pretrained(d / "hf")
    hf_to_dist(d / "hf", d / "ckpt_tp1", tp=1, pp=2)
    hf_to_dist(d / "hf", d / "ckpt_tp2", tp=2)
    tokens = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens).logits.float()
    logp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    cfg = model_config_from_hf(model.config.to_dict())
    lay = Layout.from_config(cfg, pad_vocab=False)
    # The engine's export in HF names: the mapping applied to the HF tensors themselves.
    from prime_mcore.convert import hf_to_mcore

    weights = dict(mcore_to_hf(hf_to_mcore(hf_tensors(d / "hf").items(), lay), lay))
    torch.save({"tokens": tokens, "logits": logits, "logprobs": logp, "weights": weights},
               d / "reference.pt")


def test_converted_checkpoints_load_at_tp2_and_pp2(tmp_path: Path) -> None:
    for case in CASES:
        _prepare(tmp_path, case)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), "--work", str(tmp_path), "--layouts", "tp2,pp2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-6000:]}")
    for layout in ("tp2", "pp2"):
        for case in CASES:
            result = json.loads((tmp_path / f"results_{layout}_{case}.json").read_text())
            assert result["weights_equal"], (layout, case)
            assert result["logits"] < TOL and result["logprobs"] < TOL, (layout, case, result)
            # the engine's own multi-file save at this layout converts back bit for bit
            saved = tmp_path / f"saved_{layout}_{case}"
            write_model_config(saved, model_config_from_hf(
                json.loads((tmp_path / case / "hf" / "config.json").read_text())))
            stats: dict[str, int] = {}
            back = dist_to_hf(saved, tmp_path / f"back_{layout}_{case}", stats=stats)
            assert_bitwise_equal(hf_tensors(back), hf_tensors(tmp_path / case / "hf"))
            assert len(list((saved / "dist").glob("*.distcp"))) > 1
            if layout == "tp2":  # row-parallel layers split columns: read through DCP
                assert stats["written"] > 0 and stats["copied"] > 0
