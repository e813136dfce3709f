"""RL prompt data in the Eurus-2-RL-Data (veRL) parquet schema (spec section 9).

One row: ``data_source`` (str), ``prompt`` (list of {role, content}), ``ability``
("math" | "code"), ``reward_model`` {style: "rule", ground_truth}, ``extra_info``
{split, index}. Rows are validated one by one; bad rows either fail the read with their
indices and reasons (default) or are skipped and counted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "ABILITIES",
    "ROLES",
    "RLExample",
    "ReadResult",
    "BadRowsError",
    "rl_arrow_schema",
    "validate_row",
    "read_rl_parquet",
    "write_rl_parquet",
    "SFTRow",
    "read_sft_parquet",
    "write_sft_parquet",
]

log = logging.getLogger(__name__)

ABILITIES: tuple[str, ...] = ("math", "code")
ROLES: tuple[str, ...] = ("system", "user", "assistant")
_REQUIRED_COLUMNS = ("data_source", "prompt", "ability", "reward_model")
_MAX_LISTED = 20  # bad rows spelled out in an error message


@dataclass(frozen=True)
class RLExample:
    """One RL prompt with its verifiable answer.

    ``prompt`` holds chat messages ({"role", "content"}); ``ground_truth`` is the LaTeX answer
    (math) or a JSON string {"inputs": [...], "outputs": [...], optional "fn_name"} (code);
    ``extra_info`` is {"split": str, "index": int} (both optional).
    """

    data_source: str
    prompt: list[dict[str, str]]
    ability: str
    ground_truth: str
    extra_info: dict[str, Any] = field(default_factory=dict)

    def with_system_prompt(self, system_prompt: str) -> RLExample:
        """A copy whose system message is ``system_prompt`` (inserted first if absent);
        this is ``data.system_prompt`` overriding the row's own system turn."""
        rest = [m for m in self.prompt if m["role"] != "system"]
        return replace(self, prompt=[{"role": "system", "content": system_prompt}, *rest])


class ReadResult(NamedTuple):
    """Rows read from parquet; ``num_skipped`` counts bad rows dropped by skip_bad_rows."""

    examples: list[RLExample]
    num_skipped: int


class BadRowsError(ValueError):
    """Malformed rows in an RL parquet file; ``bad`` lists (row index, reason)."""

    def __init__(self, path: str, bad: list[tuple[int, str]], total: int, hint: str = "") -> None:
        self.path = path
        self.bad = bad
        shown = bad[:_MAX_LISTED]
        listed = "; ".join(f"row {i}: {why}" for i, why in shown)
        more = f"; ... and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
        super().__init__(f"{path}: {len(bad)} bad row(s) of {total}, indices "
                         f"{[i for i, _ in shown]}: {listed}{more}.{hint}")


def rl_arrow_schema() -> Any:
    """The exact pyarrow schema written by write_rl_parquet (veRL/Eurus field order)."""
    import pyarrow as pa

    return pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64())])),
    ])


def _prompt_problem(prompt: Any) -> str | None:
    if not isinstance(prompt, list) or not prompt:
        return "prompt is missing or empty"
    for j, msg in enumerate(prompt):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            return f"prompt[{j}] is not a {{role, content}} message"
        if msg.get("role") not in ROLES:
            return f"prompt[{j}].role={msg.get('role')!r} is not one of {list(ROLES)}"
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        return "prompt has no non-empty user message"
    return None


def _code_truth_problem(truth: str) -> str | None:
    try:
        cases = json.loads(truth)
    except json.JSONDecodeError as err:
        return f"code ground_truth is not JSON ({err.msg})"
    if not isinstance(cases, dict):
        return "code ground_truth is not a JSON object"
    inputs, outputs = cases.get("inputs"), cases.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        return "code ground_truth lacks 'inputs'/'outputs' lists"
    if len(inputs) != len(outputs) or not inputs:
        return f"code ground_truth has {len(inputs)} inputs and {len(outputs)} outputs"
    return None


def validate_row(row: dict[str, Any]) -> str | None:
    """Why ``row`` (a pylist row of the RL schema) is malformed, or None when it is fine."""
    source = row.get("data_source")
    if not isinstance(source, str) or not source:
        return "data_source is missing or empty"
    problem = _prompt_problem(row.get("prompt"))
    if problem:
        return problem
    ability = row.get("ability")
    if ability not in ABILITIES:
        return f"ability={ability!r} is not one of {list(ABILITIES)}"
    reward = row.get("reward_model")
    truth = reward.get("ground_truth") if isinstance(reward, dict) else None
    if not isinstance(truth, str) or not truth.strip():
        return "reward_model.ground_truth is missing or empty"
    if ability == "code":
        problem = _code_truth_problem(truth)
        if problem:
            return problem
    extra = row.get("extra_info")
    if extra is not None and not isinstance(extra, dict):
        return "extra_info is not a struct"
    return None


def _to_example(row: dict[str, Any]) -> RLExample:
    extra = {k: v for k, v in (row.get("extra_info") or {}).items() if v is not None}
    return RLExample(
        data_source=row["data_source"],
        prompt=[{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
        ability=row["ability"],
        ground_truth=row["reward_model"]["ground_truth"],
        extra_info=extra,
    )


def _parquet_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(item.glob("*.parquet"))
            if not found:
                raise FileNotFoundError(f"{item}: directory holds no *.parquet files")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such parquet file or directory")
    if not files:
        raise ValueError("no parquet paths given")
    return files


def _read_one(path: Path, skip_bad_rows: bool) -> ReadResult:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    missing = [c for c in _REQUIRED_COLUMNS if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected the Eurus-2-RL-Data "
                         f"schema {list(_REQUIRED_COLUMNS) + ['extra_info']}")
    examples: list[RLExample] = []
    bad: list[tuple[int, str]] = []
    index = 0
    for batch in pf.iter_batches(batch_size=8192):  # bounded memory on 480K-row files
        for row in batch.to_pylist():
            problem = validate_row(row)
            if problem is None:
                examples.append(_to_example(row))
            else:
                bad.append((index, problem))
            index += 1
    if bad and not skip_bad_rows:
        raise BadRowsError(str(path), bad, index, hint=" Fix them, or set "
                           "data.skip_bad_rows=true to skip and count them.")
    if bad:
        log.warning("%s: skipped %d bad row(s) of %d (first: row %d: %s)",
                    path, len(bad), index, bad[0][0], bad[0][1])
    return ReadResult(examples, len(bad))


def read_rl_parquet(
    paths: str | os.PathLike | Sequence[str | os.PathLike], *, skip_bad_rows: bool = False
) -> ReadResult:
    """Read RL examples from a parquet file, a directory of ``*.parquet`` (sorted by name)
    or a list of either, validating every row.

    Raises BadRowsError (a ValueError naming the file, the bad row indices and why) unless
    ``skip_bad_rows``, which drops those rows, logs a warning and counts them.
    """
    examples: list[RLExample] = []
    skipped = 0
    for path in _parquet_files(paths):
        result = _read_one(path, skip_bad_rows)
        examples.extend(result.examples)
        skipped += result.num_skipped
    return ReadResult(examples, skipped)


def _to_row(ex: RLExample) -> dict[str, Any]:
    unknown = set(ex.extra_info) - {"split", "index"}
    if unknown:
        raise ValueError(f"extra_info keys {sorted(unknown)} are not in the schema {{split, index}}")
    return {
        "data_source": ex.data_source,
        "prompt": [{"role": m.get("role"), "content": m.get("content")} for m in ex.prompt],
        "ability": ex.ability,
        "reward_model": {"style": "rule", "ground_truth": ex.ground_truth},
        "extra_info": {"split": ex.extra_info.get("split"), "index": ex.extra_info.get("index")},
    }


def _write_atomic(table: Any, path: Path) -> Path:
    """Write a parquet table to a temp file next to ``path``, then os.replace it in, so a
    reader never sees a half-written file."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_rl_parquet(examples: Iterable[RLExample], path: str | os.PathLike) -> Path:
    """Write examples in the exact Eurus-2-RL-Data schema (rl_arrow_schema), atomically.
    Invalid examples raise BadRowsError before anything is written. Returns the path."""
    import pyarrow as pa

    rows = [_to_row(ex) for ex in examples]
    bad = [(i, why) for i, row in enumerate(rows) if (why := validate_row(row)) is not None]
    if bad:
        raise BadRowsError(str(path), bad, len(rows))
    return _write_atomic(pa.Table.from_pylist(rows, schema=rl_arrow_schema()), Path(path))


# --- SFT data -------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTRow:
    """One SFT example: chat messages of the prompt and the target assistant response
    (without the end-of-turn token, which the tokenizer's chat format adds)."""

    prompt: list[dict[str, str]]
    response: str


def _sft_schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("response", pa.string()),
    ])


def write_sft_parquet(rows: Iterable[SFTRow], path: str | os.PathLike) -> Path:
    """Write SFT rows (columns ``prompt`` as messages, ``response``) atomically."""
    import pyarrow as pa

    data = [{"prompt": r.prompt, "response": r.response} for r in rows]
    return _write_atomic(pa.Table.from_pylist(data, schema=_sft_schema()), Path(path))


def read_sft_parquet(path: str | os.PathLike) -> list[SFTRow]:
    """Read SFT rows; rows with a malformed prompt or an empty response raise BadRowsError."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path, columns=["prompt", "response"]).to_pylist()
    out, bad = [], []
    for i, row in enumerate(rows):
        why = _prompt_problem(row["prompt"])
        if why is None and not (isinstance(row["response"], str) and row["response"].strip()):
            why = "response is missing or empty"
        if why:
            bad.append((i, why))
        else:
            out.append(SFTRow(row["prompt"], row["response"]))
    if bad:
        raise BadRowsError(str(path), bad, len(rows))
    return out
