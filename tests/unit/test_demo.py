"""``prime_mcore.demo``: the orchestration with the --quick settings (tiny model and splits:
the numbers are meaningless, the plumbing is what is checked), and a failing stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prime_mcore import demo
from prime_mcore.demo.arms import (
    StaleRun,
    arm_dir,
    check_settings,
    policy_updates,
    rl_config,
    sft_more_config,
)
from prime_mcore.demo.runner import StageFailed, run_child


@pytest.mark.slow
def test_quick_demo_table_matches_eval_files_and_rerun_skips(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    settings = demo.DemoSettings(out=out, seeds=(1, 2), quick=True, jobs=2)
    results = demo.run_demo(settings)

    table = (out / "results.md").read_text()
    assert (out / "reward_curves.png").is_file() and (out / "eval_accuracy.png").is_file()
    for arm in demo.ARMS:
        assert len(results[arm]) == (1 if arm == "sft" else 2)
        row = next(line for line in table.splitlines() if line.startswith(f"| {demo.LABELS[arm]} |"))
        per_seed = row.split("|")[4].strip()
        for rec in results[arm]:
            saved = json.loads((arm_dir(settings, arm, rec["seed"]) / "eval.json").read_text())
            assert saved["n"] == 24  # the quick test split, the same for every arm
            assert 0.0 <= rec["accuracy"] <= 1.0
            assert rec["accuracy"] == saved["accuracy"] == saved["correct"] / saved["n"]
            assert rec["wall_s"] > 0 and rec["cpu_s"] > 0
        assert per_seed == " / ".join(f"{100 * r['accuracy']:.1f}" for r in results[arm])
    # every child wrote its log; RL runs wrote one metrics row per step
    for seed in (1, 2):
        for algo in ("rloo", "prime"):
            assert (out / "logs" / f"{algo}_s{seed}.log").is_file()
            rows = (out / f"{algo}_s{seed}" / "metrics.jsonl").read_text().splitlines()
            assert [json.loads(r)["step"] for r in rows] == [1, 2]
    # the carry breakdown splits each arm's accuracy: its weighted mean is the arm's mean
    lines = table.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| arm | with a carry"))
    n_carry, n_plain = (int(c.split("(")[1].rstrip(") ")) for c in lines[head].split("|")[2:4])
    assert n_carry + n_plain == 24
    for arm, line in zip(demo.ARMS, lines[head + 2:head + 2 + len(demo.ARMS)], strict=True):
        carry, plain = (float(c) for c in line.split("|")[2:4])
        mean = 100 * sum(r["accuracy"] for r in results[arm]) / len(results[arm])
        assert (n_carry * carry + n_plain * plain) / 24 == pytest.approx(mean, abs=0.1)
    # equal extra compute: the continued SFT took the RL arms' policy-update budget
    assert {(r["steps"], r["batch"]) for r in results["sft_more"]} == \
        {(r["steps"], r["batch"]) for r in results["prime"]}

    capsys.readouterr()
    again = demo.run_demo(settings)
    printed = capsys.readouterr().out
    assert printed.count("already trained, skipped") == 1 + 3 * 2
    assert {a: [r["accuracy"] for r in again[a]] for a in demo.ARMS} == \
        {a: [r["accuracy"] for r in results[a]] for a in demo.ARMS}


def test_equal_compute_control_matches_the_rl_policy_updates(tmp_path: Path) -> None:
    s = demo.DemoSettings(out=tmp_path)
    rl = rl_config(s, "prime", 1)
    steps, batch = policy_updates(rl)
    responses = rl.data.train_batch_size * rl.rollout.n_samples
    assert steps == rl.run.max_steps * rl.algo.ppo_epochs * responses // rl.algo.mini_batch_size
    more = sft_more_config(s, 1)
    assert (more.run.max_steps, more.sft.batch_size) == (steps, batch)
    assert more.optim.lr == more.optim.min_lr  # continued at the SFT run's final, decayed LR
    assert rl_config(s, "rloo", 1).run.max_steps == rl.run.max_steps


def test_a_failing_stage_names_itself_and_quotes_its_log(tmp_path: Path) -> None:
    s = demo.DemoSettings(out=tmp_path, quick=True)  # no SFT run: the RL arm has no start
    with pytest.raises(StageFailed, match=r"demo stage rloo \(seed 1\) failed") as err:
        run_child(s, "rloo", 1, 1)
    assert str(tmp_path / "logs" / "rloo_s1.log") in str(err.value)
    assert "Traceback" in str(err.value) or "Error" in str(err.value)
    assert not (tmp_path / "rloo_s1" / "train.json").exists()


def test_a_run_dir_is_not_reused_under_other_settings(tmp_path: Path) -> None:
    s = demo.DemoSettings(out=tmp_path, quick=True)
    check_settings(s, "prime", 1)  # first use records the settings
    saved = json.loads((tmp_path / "prime_s1" / "demo_settings.json").read_text())
    assert saved["prm.beta"] == 0.05 and saved["run.seed"] == 1
    check_settings(s, "prime", 1)  # the same settings: reusable
    assert saved["model.load_path"] == "<out>/sft/best" and "run.output_dir" not in saved
    # the same directory spelt as an absolute path is the same run
    check_settings(demo.DemoSettings(out=tmp_path.resolve(), quick=True), "prime", 1)
    changed = demo.DemoSettings(out=tmp_path, quick=True, rl_overrides=["prm.beta=0.5"])
    with pytest.raises(StaleRun, match=r"prime_s1 was trained with other settings "
                                       r"\(prm\.beta: 0\.05 -> 0\.5\)"):
        check_settings(changed, "prime", 1)
    # the continued-SFT control derives its budget from the RL settings: it is stale too
    check_settings(s, "sft_more", 1)
    with pytest.raises(StaleRun, match=r"sft_more_s1 .*run\.max_steps: 2 -> 4"):
        check_settings(demo.DemoSettings(out=tmp_path, quick=True,
                                         rl_overrides=["run.max_steps=4"]), "sft_more", 1)
    with pytest.raises(StaleRun, match="other settings"):  # the orchestrator checks too
        run_child(changed, "prime", 1, 1)


def test_arms_are_checked_from_parallel_threads(tmp_path: Path) -> None:
    """The orchestrator checks arms from a thread pool; hydra's global state used to make
    concurrent composes fail ("GlobalHydra is already initialized")."""
    from concurrent.futures import ThreadPoolExecutor

    s = demo.DemoSettings(out=tmp_path, quick=True)
    stages = [(arm, seed) for seed in (1, 2) for arm in ("rloo", "prime", "sft_more")]
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda st: check_settings(s, *st), stages))
    assert all((arm_dir(s, arm, seed) / "demo_settings.json").is_file() for arm, seed in stages)


def test_carry_breakdown_reads_each_arms_samples_in_test_order(tmp_path: Path) -> None:
    from prime_mcore.demo.report import carry_breakdown, carry_flags

    data = tmp_path / "data"
    data.mkdir()
    spec = {"seed": 3, "n": [40, 10, 30], "ops": [2], "operands": [1, 20], "slip": [0.4, "carry"]}
    (data / "builtin.json").write_text(json.dumps(spec))
    flags = carry_flags(data)
    assert flags is not None and len(flags) == 30
    n_carry = sum(f for _, f in flags)
    assert 0 < n_carry < 30

    def write(path: Path, rows: list[tuple[str, bool]], solve_carry: bool) -> None:
        path.write_text("".join(json.dumps({"truth": t, "score": float(f == solve_carry)}) + "\n"
                                for t, f in rows))

    results, dirs = {}, {}
    for arm in demo.ARMS:  # each arm solves exactly the carry problems, or exactly the others
        results[arm] = [{"seed": 0 if arm == "sft" else 1}]
        d = dirs[(arm, results[arm][0]["seed"])] = tmp_path / arm
        d.mkdir()
        write(d / "eval_samples.jsonl", flags, arm in ("rloo", "prime"))
    text = carry_breakdown(results, dirs, data)
    assert f"| with a carry or borrow ({n_carry}) | without ({30 - n_carry}) |" in text
    assert f"| {demo.LABELS['prime']} | 100.0 | 0.0 |" in text
    assert f"| {demo.LABELS['sft']} | 0.0 | 100.0 |" in text
    assert "drop the carry" in text
    # samples that do not line up with the test split: no table rather than a wrong one
    write(tmp_path / "rloo" / "eval_samples.jsonl", flags[::-1], True)  # same length, reordered
    assert carry_breakdown(results, dirs, data) == ""
    (tmp_path / "rloo" / "eval_samples.jsonl").write_text('{"truth": "1", "score": 1.0}\n')
    assert carry_breakdown(results, dirs, data) == ""
    assert carry_breakdown(results, dirs, tmp_path) == ""  # no builtin.json
