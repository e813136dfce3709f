"""The eval trainer end to end on a tiny random model (real engines, HF rollouts, real
verifiers): results table and items.jsonl, greedy determinism, best-of-N with the implicit
PRM (checked against a direct transformers computation), majority vote and oracle."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prime_mcore.config import EvalConfig
from prime_mcore.data.benchmarks import CATALOG
from prime_mcore.launch.registry import compose
from prime_mcore.rollout import Sample
from tests.unit.eval.benchmark_fixtures import write_fixture_root

TINY = ["experiment=eval_tiny_cpu", "data.builtin_num_train=200", "data.builtin_num_val=8",
        "data.builtin_num_test=8", "max_tokens=12", "verifier_workers=1", "limit=3"]


def config(tmp: Path, *extra: str) -> EvalConfig:
    return OmegaConf.to_object(compose("eval", [*TINY, f"run.output_dir={tmp}", *extra]))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Built-in data (generated once), a MATH-500-format file, two engine checkpoints."""
    from prime_mcore.engine import build_engine, init_distributed
    from prime_mcore.trainers.common import prepare_builtin

    tmp = tmp_path_factory.mktemp("eval")
    cfg = config(tmp)
    prepare_builtin(cfg.data, tmp / "data")
    init_distributed(cfg.parallel, seed=0)
    for name, seed in (("pol", 0), ("prm", 1)):
        build_engine(cfg.model, cfg.parallel, None, role="reference", seed=seed).save(
            tmp / name, step=0)
    root = write_fixture_root(tmp / "bench")
    return {"tmp": tmp, "math500": root / CATALOG["math500"].path, "pol": tmp / "pol",
            "prm": tmp / "prm"}


def run_eval(assets, name: str, *extra: str, inject: bool = False):
    """Run the eval; with ``inject`` (the trainer driven directly), greedy responses to every
    other item are replaced by the correct boxed answer (so accuracies are not all zero);
    without, through the entry point's ``main``."""
    from prime_mcore.eval import main, write_results
    from prime_mcore.trainers.eval import EvalTrainer, build_prompt

    cfg = config(assets["tmp"], f"run.name={name}", f"files=[{assets['math500']}]", *extra)
    run_dir = assets["tmp"] / name
    shutil.copytree(assets["tmp"] / "data", run_dir / "data")  # skip regenerating the task
    if not inject:
        metrics = main(cfg)
        items = [json.loads(x) for x in (run_dir / "items.jsonl").read_text().splitlines()]
        return run_dir, metrics, items
    trainer = EvalTrainer(cfg)
    tok, orig = trainer.tokenizer, trainer._generate
    truth = {tuple(trainer.prompts.ids(build_prompt(it, cfg.system_prompt))): it.ground_truth
             for b in trainer.benchmarks for it in b.items[::2]}

    def generate(prompt_ids, n, sampling, bar):
        groups = orig(prompt_ids, n, sampling, bar)
        for i, p in enumerate(prompt_ids):
            if n == 1 and tuple(p) in truth:
                ids = tok(f"so \\boxed{{{truth[tuple(p)]}}}")["input_ids"] + [tok.eos_token_id]
                groups[i] = [Sample(groups[i][0].prompt_index, ids, [0.0] * len(ids), "stop")]
        return groups

    trainer._generate = generate
    table = trainer.run()
    write_results(run_dir, table, [b.name for b in trainer.benchmarks], cfg, trainer.notes)
    items = [json.loads(x) for x in (run_dir / "items.jsonl").read_text().splitlines()]
    return run_dir, table, items


def test_greedy_table_items_and_bon_with_prm_equal_to_reference(assets):
    run_dir, table, items = run_eval(
        assets, "a", f"checkpoints=[m:{assets['pol']}]", "best_of_n=3",
        f"prm_path={assets['pol']}", f"ref_path={assets['pol']}", inject=True)
    rows = list(csv.reader((run_dir / "results.csv").open()))
    assert rows[0] == ["model", "metric", "math500", "builtin", "Avg"]
    metrics = [r[1] for r in rows[1:]]
    assert metrics == ["pass@1", "bon@3 prm-min", "maj@3", "pass@3 oracle", "avg@3 T=1"]
    md = (run_dir / "results.md").read_text()
    assert md.count("| m |") == 5 and "- math500: 3 items, n=1, T=0, top_p=1, max_tokens=12" in md
    main = [x for x in items if x["pass"] == "main"]
    assert len(main) == 6 and {x["model"] for x in items} == {"m"}
    for x in main:
        assert x["prompt"].startswith("<|im_start|>user\n") and len(x["responses"]) == 1
        assert x["reasons"][0] in ("correct", "wrong", "no_answer")
    for bench in ("math500", "builtin"):
        scores = [x["score"] for x in main if x["benchmark"] == bench]
        assert scores[0] == scores[2] == 1.0  # the injected correct answers
        assert table[("m", "pass@1")][bench] == sum(scores) / len(scores)
        bon = [x for x in items if x["pass"] == "bon" and x["benchmark"] == bench]
        assert len(bon) == 3 and all(len(x["responses"]) == 3 for x in bon)
        # PRM == reference: every implicit reward is 0, so candidate 0 wins the tie
        assert all(x["prm_scores"] == [0.0] * 3 and x["bon_index"] == 0 for x in bon)
        assert table[("m", "bon@3 prm-min")][bench] == sum(x["scores"][0] for x in bon) / 3
        assert table[("m", "pass@3 oracle")][bench] == sum(max(x["scores"]) for x in bon) / 3
    for row in rows[1:]:
        assert all(0.0 <= float(v) <= 1.0 for v in row[2:])
        assert float(row[-1]) == pytest.approx((float(row[2]) + float(row[3])) / 2)


def test_greedy_is_deterministic_and_bon_picks_the_prm_argmax(assets):
    run_dir, metrics, items = run_eval(
        assets, "b", f"checkpoints=[x:{assets['pol']},y:{assets['pol']}]", "best_of_n=3",
        f"prm_path={assets['prm']}", f"ref_path={assets['pol']}", "prm_aggregate=last", "limit=2")
    main = {(x["model"], x["benchmark"], x["id"]): x["responses"] for x in items
            if x["pass"] == "main"}
    assert len(main) == 8
    for (model, bench, ident), responses in main.items():
        if model == "x":  # same weights reloaded and re-synced: identical greedy output
            assert main[("y", bench, ident)] == responses
    bon = [x for x in items if x["pass"] == "bon"]
    assert any(s != 0.0 for x in bon for s in x["prm_scores"])
    for x in bon:
        assert x["bon_index"] == x["prm_scores"].index(max(x["prm_scores"]))
        assert x["bon_score"] == x["scores"][x["bon_index"]]
        if x["majority_answer"] is None:
            assert x["majority_score"] == 0.0
    for bench in ("math500", "builtin"):
        assert metrics[f"eval/x/pass@1/{bench}"] == metrics[f"eval/y/pass@1/{bench}"]
    assert (run_dir / "results.md").read_text().count("| x |") == 5
    with pytest.raises(ValueError, match="labels repeat"):
        run_eval(assets, "c", f"checkpoints=[{assets['pol']},{assets['pol']}]")


def _direct_scores(assets, prompt, responses, beta):
    """Implicit Q via transformers (not the engine), step ends from decoded prefixes, min."""
    from transformers import AutoModelForCausalLM

    from prime_mcore.convert.engine_io import export_engine_to_hf
    from prime_mcore.data.tokenizer import load_tokenizer
    from prime_mcore.engine import build_engine

    cfg = config(assets["tmp"])
    tok = load_tokenizer(assets["tmp"] / "data" / "tokenizer")
    models = {}
    for name in ("prm", "pol"):
        eng = build_engine(cfg.model, cfg.parallel, None, role="reference", seed=5)
        eng.load(assets[name], weights_only=True)
        out = export_engine_to_hf(eng, cfg.model, assets["tmp"] / f"hf_{name}", writer=True,
                                  force=True)
        models[name] = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    scores = []
    for resp in responses:
        ids = torch.tensor([prompt + resp])
        lp = {}
        for name, model in models.items():
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt) - 1:-1]
            lp[name] = logits.log_softmax(-1).gather(-1, torch.tensor(resp)[:, None])[:, 0]
        q = beta * (lp["prm"] - lp["pol"]).cumsum(0)
        full = tok.decode(resp)
        ends = []
        for k in range(len(resp)):
            lo, hi = len(tok.decode(resp[:k])), len(tok.decode(resp[:k + 1]))
            if any(full[j] == "\n" and j > 0 and full[j - 1] == "\n"
                   and (j + 1 == len(full) or full[j + 1] != "\n") for j in range(lo, hi)):
                ends.append(k)
        ends = sorted(set(ends) | {len(resp) - 1})
        scores.append(float(q[ends].min()))
    return scores


def test_prm_scorer_matches_a_direct_computation(assets):
    from prime_mcore.algo.best_of_n import best_of_n
    from prime_mcore.data.tokenizer import load_tokenizer
    from prime_mcore.engine import build_engine
    from prime_mcore.trainers.eval import PRMScorer

    cfg = config(assets["tmp"])
    tok = load_tokenizer(assets["tmp"] / "data" / "tokenizer")
    engines = []
    for name in ("prm", "pol"):
        eng = build_engine(cfg.model, cfg.parallel, None, role="reference", seed=7)
        eng.load(assets[name], weights_only=True)
        engines.append(eng)
    scorer = PRMScorer(*engines, tok, beta=0.05, aggregate="min", micro_batch_size=2)
    prompt = tok("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
    texts = ["[ASSESS]\n\n# add\n\nNext action: [OUTPUT]\n\n\\boxed{4}", "so 4", "a\n\nb\n\n\n\nc"]
    responses = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    got = scorer.score([prompt] * 3, responses)
    want = _direct_scores(assets, prompt, responses, 0.05)
    assert got == pytest.approx(want, abs=1e-6)
    assert best_of_n(torch.tensor(got), n=3).item() == max(range(3), key=lambda i: want[i])
