"""Built-in task of the embedded default: multi-step arithmetic word problems.

"Tom has 37 apples. He buys 48 more and gives away 19. How many apples does he have now?"
Answer: ``\\boxed{66}``. Everything is deterministic from a seed. A problem's split is a
hash of its arithmetic (not of the seed or the wording), so a test problem never appears in
train under any seed. SFT traces use the seven-action format (spec 8) and can come from a
*noisy teacher*: a fraction ``slip_rate`` of traces carries an arithmetic slip that
propagates to a wrong boxed answer, so SFT alone plateaus and a verifiable reward has real
headroom (DESIGN.md "The embedded default must be an honest experiment").
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prime_mcore.data.prompts import build_messages
from prime_mcore.data.schema import RLExample, SFTRow, write_rl_parquet, write_sft_parquet

__all__ = [
    "DATA_SOURCE",
    "SLIP_MODES",
    "ArithProblem",
    "BuiltinSplits",
    "generate_problems",
    "make_splits",
    "split_of",
    "render_trace",
    "has_carry",
    "make_sft_rows",
    "to_rl_examples",
    "write_builtin_task",
]

DATA_SOURCE = "builtin_arith"
SLIP_MODES = ("carry", "uniform")
# Fixed hash buckets: the split of a problem never depends on the seed or the sizes asked.
_TEST_FRACTION, _VAL_FRACTION = 0.1, 0.1
_MAX_MISSES = 100_000  # consecutive draws adding nothing: the problem space is exhausted

_NAMES = (("Tom", "He"), ("Anna", "She"), ("Ben", "He"), ("Mia", "She"),
          ("Sam", "He"), ("Lily", "She"), ("Max", "He"), ("Zoe", "She"))
_ITEMS = ("apples", "marbles", "stickers", "coins", "books", "cards", "pencils", "shells")
_ADD = ("buys {} more", "finds {} more", "gets {} more", "wins {} more")
_SUB = ("gives away {}", "sells {}", "loses {}", "uses {}")


@dataclass(frozen=True)
class ArithProblem:
    """``start`` followed by ``ops`` (("+" | "-", operand), ...), worded with fixed choices."""

    start: int
    ops: tuple[tuple[str, int], ...]
    name: int  # index into _NAMES
    item: int  # index into _ITEMS
    verbs: tuple[int, ...]  # per op, index into _ADD or _SUB

    @property
    def expression(self) -> str:
        """The arithmetic alone, e.g. "37+48-19" (the split and dedup key)."""
        return str(self.start) + "".join(f"{op}{x}" for op, x in self.ops)

    def values(self) -> list[int]:
        """Intermediate results after each operation (the last one is the answer)."""
        out, v = [], self.start
        for op, x in self.ops:
            v = v + x if op == "+" else v - x
            out.append(v)
        return out

    @property
    def answer(self) -> int:
        """The correct final count."""
        return self.values()[-1]

    @property
    def question(self) -> str:
        """The word problem (without the answer-format suffix)."""
        name, pron = _NAMES[self.name]
        item = _ITEMS[self.item]
        acts = [(_ADD if op == "+" else _SUB)[v].format(x)
                for (op, x), v in zip(self.ops, self.verbs, strict=True)]
        acts_text = acts[0] if len(acts) == 1 else ", ".join(acts[:-1]) + " and " + acts[-1]
        return (f"{name} has {self.start} {item}. {pron} {acts_text}. "
                f"How many {item} does {pron.lower()} have now?")


@dataclass(frozen=True)
class BuiltinSplits:
    """Disjoint problem lists (no expression is shared between two splits)."""

    train: list[ArithProblem]
    val: list[ArithProblem]
    test: list[ArithProblem]


def _unit(*parts: object) -> float:
    """A uniform number in [0, 1) from a stable hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(problem: ArithProblem) -> str:
    """"train", "val" or "test", from a hash of the problem's arithmetic."""
    u = _unit(DATA_SOURCE, problem.expression)
    return "test" if u < _TEST_FRACTION else "val" if u < _TEST_FRACTION + _VAL_FRACTION \
        else "train"


def _draw(rng: random.Random, num_ops: Sequence[int], lo: int, hi: int) -> ArithProblem:
    v = start = rng.randint(lo, hi)
    ops: list[tuple[str, int]] = []
    verbs: list[int] = []
    for _ in range(rng.choice(num_ops)):
        # subtract only when the count stays >= 0 (items cannot go negative)
        if v >= lo and rng.random() < 0.5:
            x = rng.randint(lo, min(hi, v))
            ops.append(("-", x))
            v -= x
        else:
            x = rng.randint(lo, hi)
            ops.append(("+", x))
            v += x
        verbs.append(rng.randrange(len(_ADD)))
    return ArithProblem(start, tuple(ops), rng.randrange(len(_NAMES)),
                        rng.randrange(len(_ITEMS)), tuple(verbs))


def _exhausted(what: str, num_ops: Sequence[int], lo: int, hi: int) -> ValueError:
    return ValueError(f"could not draw {what} within {_MAX_MISSES} draws without a new "
                      f"problem: num_ops={tuple(num_ops)} with operands {lo}..{hi} has too "
                      f"few distinct problems; widen lo..hi or num_ops")


def generate_problems(
    seed: int, n: int, *, num_ops: Sequence[int] = (2, 3), lo: int = 10, hi: int = 99
) -> list[ArithProblem]:
    """``n`` distinct problems (by expression) from ``seed``, ignoring splits."""
    rng, seen, out, misses = random.Random(seed), set(), [], 0
    while len(out) < n:
        p = _draw(rng, num_ops, lo, hi)
        if p.expression in seen:
            misses += 1
            if misses > _MAX_MISSES:
                raise _exhausted(f"{n} problems (got {len(out)})", num_ops, lo, hi)
            continue
        seen.add(p.expression)
        out.append(p)
        misses = 0
    return out


def make_splits(
    seed: int, n_train: int, n_val: int, n_test: int, *,
    num_ops: Sequence[int] = (2, 3), lo: int = 10, hi: int = 99,
) -> BuiltinSplits:
    """Train/val/test problem lists of the given sizes, deterministic from ``seed``,
    disjoint by construction (split_of), without duplicates."""
    want = {"train": n_train, "val": n_val, "test": n_test}
    got: dict[str, list[ArithProblem]] = {k: [] for k in want}
    rng, seen, misses = random.Random(seed), set(), 0
    while any(len(got[k]) < want[k] for k in want):
        p = _draw(rng, num_ops, lo, hi)
        split = split_of(p)
        if len(got[split]) < want[split] and p.expression not in seen:
            seen.add(p.expression)
            got[split].append(p)
            misses = 0
            continue
        misses += 1
        if misses > _MAX_MISSES:
            have = {k: len(v) for k, v in got.items()}
            raise _exhausted(f"splits {want} (got {have})", num_ops, lo, hi)
    return BuiltinSplits(got["train"], got["val"], got["test"])


def render_trace(problem: ArithProblem, slip_step: int | None = None, slip_delta: int = 0) -> str:
    """The seven-action SFT response; with ``slip_step`` the teacher's result of that step
    is off by ``slip_delta`` and later steps build on the wrong value."""
    lines = ["[ASSESS]", f"# {problem.expression}", "Next action: [ADVANCE]", "", "[ADVANCE]"]
    v = problem.start
    for k, (op, x) in enumerate(problem.ops):
        new = (v + x if op == "+" else v - x) + (slip_delta if k == slip_step else 0)
        lines.append(f"# {v}{op}{x}={new}")
        v = new
    lines += ["Next action: [OUTPUT]", "", "[OUTPUT]", f"# The answer is \\boxed{{{v}}}"]
    return "\n".join(lines)


def _carry_steps(problem: ArithProblem) -> list[int]:
    """Steps with a carry (+) or a borrow (-) in the units digit."""
    out, v = [], problem.start
    for k, (op, x) in enumerate(problem.ops):
        if (op == "+" and v % 10 + x % 10 >= 10) or (op == "-" and v % 10 < x % 10):
            out.append(k)
        v = v + x if op == "+" else v - x
    return out


def has_carry(problem: ArithProblem) -> bool:
    """Whether some step carries (+) or borrows (-): where the noisy teacher slips."""
    return bool(_carry_steps(problem))


def _plan_slip(problem: ArithProblem, mode: str, seed: int) -> tuple[int, int] | None:
    """(step, delta) of the slip this problem would get, or None when it cannot slip."""
    if mode == "carry":
        steps = _carry_steps(problem)
        if not steps:
            return None
        k = steps[0]  # the teacher drops the first carry (-10) or borrow (+10)
        delta = -10 if problem.ops[k][0] == "+" else 10
    else:
        k = int(_unit(seed, "step", problem.expression) * len(problem.ops))
        deltas = (-10, -1, 1, 10)
        delta = deltas[int(_unit(seed, "delta", problem.expression) * len(deltas))]
    if any(v + delta < 0 for v in problem.values()[k:]):
        return None  # a count cannot go negative, even in a wrong trace
    return k, delta


def make_sft_rows(
    problems: Sequence[ArithProblem], *, slip_rate: float = 0.0, slip_mode: str = "carry",
    seed: int = 0, system_prompt: str | None = None,
) -> list[SFTRow]:
    """SFT rows (prompt messages, seven-action response) for ``problems``.

    Noisy teacher: about ``slip_rate`` of the traces carry one arithmetic slip that makes
    the boxed answer wrong. ``slip_mode="carry"`` puts every slip on problems with a carry
    or borrow (the teacher "forgets the carry"), so the error is systematic: with
    slip_rate above half the carry share, a greedy student learns the bug and only a reward
    can fix it. ``"uniform"`` slips at random (off by 1 or 10 at a random step). Which
    traces slip is a hash of (seed, problem), independent of order.
    """
    if slip_mode not in SLIP_MODES:
        raise ValueError(f"slip_mode={slip_mode!r} is not one of {list(SLIP_MODES)}")
    if not 0.0 <= slip_rate <= 1.0:
        raise ValueError(f"slip_rate={slip_rate} must be in [0, 1]")
    plans = [_plan_slip(p, slip_mode, seed) for p in problems]
    eligible = sum(plan is not None for plan in plans)
    # rescale so that the slipped share of *all* traces is slip_rate (capped by eligibility)
    p_slip = min(1.0, slip_rate * len(problems) / eligible) if eligible else 0.0
    rows = []
    for problem, plan in zip(problems, plans, strict=True):
        slip = plan is not None and _unit(seed, "slip", problem.expression) < p_slip
        step, delta = plan if slip else (None, 0)
        rows.append(SFTRow(
            prompt=build_messages(problem.question, "math", system_prompt=system_prompt),
            response=render_trace(problem, step, delta),
        ))
    return rows


def to_rl_examples(
    problems: Sequence[ArithProblem], split: str, *, system_prompt: str | None = None
) -> list[RLExample]:
    """RL rows (Eurus schema): ability "math", ground truth the integer answer as text."""
    return [
        RLExample(
            data_source=DATA_SOURCE,
            prompt=build_messages(p.question, "math", system_prompt=system_prompt),
            ability="math",
            ground_truth=str(p.answer),
            extra_info={"split": split, "index": i},
        )
        for i, p in enumerate(problems)
    ]


def write_builtin_task(
    out_dir: str | Path, seed: int, n_train: int, n_val: int, n_test: int, *,
    slip_rate: float = 0.0, slip_mode: str = "carry", num_ops: Sequence[int] = (2, 3),
    lo: int = 10, hi: int = 99, system_prompt: str | None = None,
) -> dict[str, Path]:
    """Write ``rl_{train,val,test}.parquet`` (RL schema) and ``sft_train.parquet`` (noisy
    teacher traces) plus a clean ``sft_val.parquet`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    splits = make_splits(seed, n_train, n_val, n_test, num_ops=num_ops, lo=lo, hi=hi)
    paths = {}
    for name in ("train", "val", "test"):
        rows = to_rl_examples(getattr(splits, name), name, system_prompt=system_prompt)
        paths[f"rl_{name}"] = write_rl_parquet(rows, out / f"rl_{name}.parquet")
    paths["sft_train"] = write_sft_parquet(
        make_sft_rows(splits.train, slip_rate=slip_rate, slip_mode=slip_mode, seed=seed,
                      system_prompt=system_prompt), out / "sft_train.parquet")
    paths["sft_val"] = write_sft_parquet(
        make_sft_rows(splits.val, system_prompt=system_prompt), out / "sft_val.parquet")
    return paths
