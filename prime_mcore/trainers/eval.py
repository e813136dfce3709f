"""Evaluation (spec 10-11): pass@1 / avg@k per benchmark, and best-of-N with the implicit PRM.

For every row (a checkpoint) the policy weights are loaded, streamed into the rollout
backend (rank 0) and each benchmark is generated and graded by the outcome verifiers (code
in the sandbox). ``best_of_n`` adds N candidates at ``bon_temperature`` reranked by the
implicit PRM: q at each step end (steps split on "\\n\\n") is beta * the cumulative
log pi_prm - log pi_ref, aggregated by min or last; next to it majority vote on the
extracted answers and the oracle pass@N. Engine calls are collective: every rank loops the
same way, rank 0 alone generates, grades and writes.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from prime_mcore.algo.best_of_n import (
    aggregate_steps,
    best_of_n,
    implicit_q_values,
    majority_vote,
    pass_at_k,
    step_scores,
)
from prime_mcore.config import DataConfig, EvalConfig, ModelConfig
from prime_mcore.data.benchmarks import CATALOG, EvalItem, load_benchmark
from prime_mcore.data.prompts import ACTION_SYSTEM_PROMPT, build_messages
from prime_mcore.trainers import common

log = logging.getLogger("prime_mcore")


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark with its sampling (spec 10); ``max_tokens`` None = the rollout cap."""
    name: str
    items: list[EvalItem]
    max_tokens: int | None = None
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0


def _split_named(entry: str) -> tuple[str | None, str]:
    """"label:path" -> (label, path); a plain path -> (None, path)."""
    head, sep, tail = entry.partition(":")
    return (head, tail) if sep and head and "/" not in head else (None, entry)


def resolve_benchmarks(cfg: EvalConfig, builtin_test: Path | None) -> list[Benchmark]:
    """The suite's catalogued benchmarks, ``files`` and the built-in split, loaded.

    Missing files raise one FileNotFoundError naming all of them (``skip_missing``: warn and
    leave them out)."""
    wanted: list[tuple[str, Path, Any]] = []
    for key in dict.fromkeys(k for k in cfg.suite.benchmarks if k != "builtin"):
        if key not in CATALOG:
            raise ValueError(f"suite benchmark {key!r} is not one of {sorted(CATALOG)} or builtin")
        if not cfg.data_root:
            raise ValueError(f"suite={cfg.suite.name} needs data_root=<dir with the benchmark files>")
        wanted.append((key, Path(cfg.data_root) / CATALOG[key].path, CATALOG[key]))
    for entry in cfg.files:
        label, raw = _split_named(entry)
        path = Path(raw)
        if not path.is_absolute() and cfg.data_root and (Path(cfg.data_root) / path).exists():
            path = Path(cfg.data_root) / path
        wanted.append((label or "", path, None))
    missing = [f"{key or path.name}: {path}" for key, path, _ in wanted if not path.exists()]
    if missing and not cfg.skip_missing:
        raise FileNotFoundError("benchmark files not found (set skip_missing=true to skip them): "
                                + "; ".join(missing))
    if missing:
        log.warning("skipping missing benchmark files: %s", "; ".join(missing))
    out: list[Benchmark] = []
    limit = cfg.limit or None
    for key, path, spec in (w for w in wanted if w[1].exists()):
        items = load_benchmark(path, limit=limit, name=spec.name if spec else (key or None),
                               url_contains=spec and spec.url_contains,
                               date_range=spec and spec.date_range, skip_bad_rows=cfg.skip_bad_rows)
        sampling = (spec.max_tokens, spec.n, spec.temperature, spec.top_p) if spec else ()
        out.append(Benchmark(items[0].benchmark if items else key, items, *sampling))
    if builtin_test is not None:
        out.append(Benchmark("builtin", load_benchmark(builtin_test, limit=limit, name="builtin")))
    empty = [b.name for b in out if not b.items]
    if empty:
        raise ValueError(f"benchmarks without items (check filters/limit): {empty}")
    if not out:
        raise ValueError("nothing to evaluate: choose suite=paper|math|code|builtin, "
                         "files=[...] or data=builtin")
    return out


def build_prompt(item: EvalItem, system_prompt: str | None) -> list[dict[str, str]]:
    """Chat messages (spec 8): system turn per ``system_prompt`` + question + suffix."""
    if "messages" in item.meta:  # rows that carry their own (already suffixed) prompt
        rest = [m for m in item.meta["messages"] if m["role"] != "system"]
        if system_prompt is None:
            return rest
        return item.meta["messages"] if system_prompt == "action" else [
            {"role": "system", "content": system_prompt}, *rest]
    system = ACTION_SYSTEM_PROMPT if system_prompt == "action" else system_prompt
    return build_messages(item.question, item.ability, system)


def extract_program(response: str) -> str:
    """PRIME's code matcher: the last fenced block defining a function, else the last block."""
    blocks = re.findall(r"```(?:python3?|py)?[ \t]*\n?(.*?)```", response, re.DOTALL)
    if not blocks:
        from prime_mcore.rewards import extract_code

        return extract_code(response)
    return next((b for b in reversed(blocks) if "def " in b), blocks[-1])


def grading_completion(item: EvalItem, response: str) -> str:
    """What the verifier grades: math as is; code as prefix + the extracted program (PRIME's
    harness: HumanEval prompt, LeetCode imports and ``class Solution`` wrapping)."""
    if item.ability != "code":
        return response
    code = extract_program(response)
    if not code.strip():
        return response
    if item.meta.get("wrap_solution_class") and "class Solution" not in code:
        code = "class Solution:\n" + textwrap.indent(code, "    ")
    return f"```python\n{item.meta.get('code_prefix', '')}\n{code}\n```"


def grade_responses(pool: Any, items: Sequence[EvalItem], texts: Sequence[Sequence[str]], *,
                    code_timeout_s: float = 10.0) -> list[list[Any]]:
    """VerifyResults per item and response, graded in ``pool`` (a VerifierPool)."""
    flat = [(it.ability, grading_completion(it, t), it.ground_truth)
            for it, ts in zip(items, texts) for t in ts]
    res = iter(pool.score(flat, code_timeout_s=code_timeout_s))
    return [[next(res) for _ in ts] for ts in texts]


def answer_key(item: EvalItem, response: str, normalize: bool = True) -> str | None:
    """The extracted final answer (math; normalised for majority vote) or program (code)."""
    if item.ability == "code":
        return extract_program(response).strip() or None
    from prime_mcore.rewards import extract_answer
    from prime_mcore.rewards.normalize import normalize_answer

    answer = extract_answer(response)
    return answer if answer is None or not normalize else (normalize_answer(answer) or answer)


def step_end_positions(pieces: Sequence[str]) -> list[int]:
    """Token indices ending a step: the token holding the last newline of each run of two or
    more newlines ("\\n\\n" separators, which BPE merges into the step's last token), and the
    final token."""
    ends = list(accumulate(map(len, pieces)))  # char offset after each token
    runs = re.finditer(r"\n{2,}", "".join(pieces))
    out = {bisect.bisect_right(ends, m.end() - 1) for m in runs}
    out.add(len(pieces) - 1)
    return sorted(i for i in out if i < len(pieces))


class PRMScorer:
    """Aggregated implicit-PRM scores of responses (collective over the engines' ranks)."""

    def __init__(self, prm: Any, ref: Any, tokenizer: Any, *, beta: float, aggregate: str,
                 micro_batch_size: int) -> None:
        self.prm, self.ref, self.tok = prm, ref, tokenizer
        self.beta, self.how, self.mbs = beta, aggregate, micro_batch_size
        self.piece = cache(lambda token: tokenizer.decode([token]))  # token id -> its text

    def score(self, prompts: Sequence[Sequence[int]],
              responses: Sequence[Sequence[int]]) -> list[float]:
        from prime_mcore.data.batching import pad_rollouts

        out: list[float] = []
        chunk = self.mbs * 4
        for s in range(0, len(prompts), chunk):
            rb = pad_rollouts(prompts[s:s + chunk], responses[s:s + chunk], self.tok.pad_token_id,
                              eos_id=self.tok.eos_token_id)
            batch = {"input_ids": rb.input_ids, "attention_mask": rb.attention_mask,
                     "response_mask": rb.response_mask}
            lp_prm = self.prm.logprobs(batch, micro_batch_size=self.mbs).cpu()
            lp_ref = self.ref.logprobs(batch, micro_batch_size=self.mbs).cpu()
            q = implicit_q_values(lp_prm, lp_ref, rb.response_mask, beta=self.beta)
            lengths = rb.response_mask.sum(-1).tolist()
            ends = [step_end_positions([self.piece(t) for t in r[:n]])
                    for r, n in zip(responses[s:s + chunk], lengths)]
            out.extend(aggregate_steps(step_scores(q, ends), self.how).tolist())
        return out


def load_weights(engine: Any, model: ModelConfig, path: str | None) -> str:
    """Load an engine checkpoint (or ``<dir>/policy``), an HF directory, or with ``path``
    None the weights ``model`` points at; returns where they came from."""
    if path is None:
        return common.init_weights(engine, model)
    from prime_mcore.convert.engine_io import load_hf_into_engine
    from prime_mcore.manifest import MANIFEST

    root = Path(path)
    for cand in (root, root / "policy"):
        if (cand / MANIFEST).exists():
            engine.load(cand, weights_only=True)
            return str(cand)
    if (root / "config.json").exists():
        load_hf_into_engine(engine, model, root)
        return str(root)
    raise FileNotFoundError(f"{path}: neither an engine checkpoint ({MANIFEST}) nor an HF "
                            f"directory (config.json)")


class EvalTrainer:
    """Builds everything from an ``EvalConfig``; ``run`` evaluates every row."""

    def __init__(self, cfg: EvalConfig) -> None:
        from prime_mcore.data.tokenizer import load_tokenizer
        from prime_mcore.engine import build_engine, init_distributed

        self.cfg = cfg
        self.run_dir = common.run_dir_of(cfg.run.output_dir, cfg.run.name)
        init_distributed(cfg.parallel, seed=cfg.run.seed)
        common.seed_all(cfg.run.seed)
        common.write_config(cfg, self.run_dir)
        builtin = cfg.data is not None and cfg.data.source == "builtin"
        builtin = builtin or "builtin" in cfg.suite.benchmarks
        paths = common.prepare_builtin(cfg.data or DataConfig(source="builtin"),
                                       self.run_dir / "data") if builtin else {}
        self.benchmarks = resolve_benchmarks(cfg, paths.get("rl_test"))
        tok = cfg.model.tokenizer_path or paths.get("tokenizer") or cfg.model.hf_path
        if tok is None:
            raise ValueError("no tokenizer: set model.tokenizer_path or model.hf_path")
        self.tok_path = Path(tok)
        self.tokenizer = load_tokenizer(self.tok_path)
        self.prompts = common.PromptTokenizer(self.tokenizer, cfg.rollout.max_prompt_length)
        self.rows: list[tuple[str, str | None]] = []  # (label, weights; None = cfg.model's)
        for label, path in [_split_named(c) for c in cfg.checkpoints] or [(None, "")]:
            src = path or cfg.model.load_path or cfg.model.hf_path  # default label: 2 parts
            self.rows.append((label or ("/".join(Path(src).parts[-2:]) if src else "random init"),
                              path or None))
        if len({label for label, _ in self.rows}) < len(self.rows):
            raise ValueError(f"checkpoint labels repeat ({[r[0] for r in self.rows]}): give each "
                             "row its own name, checkpoints=[a:/path1,b:/path2]")
        self.engine = build_engine(cfg.model, cfg.parallel, None, role="reference",
                                   seed=cfg.run.seed)
        self.scorer, self.notes = None, {}  # notes: sampling per benchmark, for results.md
        if cfg.best_of_n:
            prm, ref = (build_engine(cfg.model, cfg.parallel, None, role="reference",
                                     seed=cfg.run.seed) for _ in range(2))
            log.info("PRM from %s, reference from %s", load_weights(prm, cfg.model, cfg.prm_path),
                     load_weights(ref, cfg.model, cfg.ref_path))
            self.scorer = PRMScorer(prm, ref, self.tokenizer, beta=cfg.prm_beta,
                                    aggregate=cfg.prm_aggregate,
                                    micro_batch_size=cfg.prm_micro_batch_size)

    def _sampling(self, bench: Benchmark, n: int, temperature: float, top_p: float) -> Any:
        from prime_mcore.rollout import SamplingParams

        cap = self.cfg.rollout.max_response_length
        want = self.cfg.max_tokens or bench.max_tokens or cap
        if want > cap:
            log.warning("%s: max_tokens %d capped at rollout.max_response_length=%d",
                        bench.name, want, cap)
        return n, SamplingParams(temperature=temperature, top_p=top_p,
                                 max_new_tokens=min(want, cap), stop=tuple(self.cfg.rollout.stop),
                                 seed=self.cfg.rollout.seed)

    def _generate(self, prompt_ids: list[list[int]], n: int, sampling: Any, bar: tqdm) -> list:
        size, groups = self.cfg.gen_batch_size, []
        for s in range(0, len(prompt_ids), size):
            chunk = prompt_ids[s:s + size]
            seed = None if sampling.seed is None else sampling.seed + s  # distinct per chunk
            out = self.rollout.backend.generate(chunk, n, sampling.replace(seed=seed))
            groups += [out.group(i) for i in range(len(chunk))]
            bar.update(len(chunk))
        return groups

    def _pass(self, bench: Benchmark, ids: list[list[int]], n: int, sampling: Any,
              bar: tqdm) -> tuple[list[dict], list[list[int]]]:
        """Generate + grade one pass (rank 0); per-item records and response token ids."""
        groups = self._generate(ids, n, sampling, bar)
        texts = [[self.prompts.decode(s.token_ids) for s in g] for g in groups]
        graded = grade_responses(self.rollout.pool, bench.items, texts,
                                 code_timeout_s=self.cfg.code_timeout_s)
        records = []
        for it, p, g, ts, rs in zip(bench.items, ids, groups, texts, graded):
            scores = [1.0 if r.score >= 1.0 else 0.0 for r in rs]
            records.append({
                "benchmark": bench.name, "id": it.id, "prompt": self.tokenizer.decode(p),
                "responses": ts, "answers": [answer_key(it, t, normalize=False) for t in ts],
                "scores": scores, "raw_scores": [r.score for r in rs],
                "reasons": [str(r.reason) for r in rs], "details": [r.detail[:200] for r in rs],
                "finish": [s.finish_reason for s in g], "score": sum(scores) / len(scores),
                "ground_truth": it.ground_truth[:500]})
        return records, [s.token_ids for g in groups for s in g]

    def _best_of_n(self, bench: Benchmark, ids: list[list[int]], bar: tqdm | None) -> list[dict]:
        """N candidates per item, PRM-reranked; collective (PRM logprobs on every rank)."""
        cfg, n = self.cfg, self.cfg.best_of_n
        records, flat = None, None
        if common.is_rank0():
            records, responses = self._pass(
                bench, ids, *self._sampling(bench, n, cfg.bon_temperature, 1.0), bar)
            flat = ([p for p in ids for _ in range(n)], responses)
        prompts, responses = common.broadcast(flat)
        scores = self.scorer.score(prompts, responses)
        if records is None:
            return []
        picks = best_of_n(torch.tensor(scores), n=n).tolist()
        for i, (rec, it, pick) in enumerate(zip(records, bench.items, picks)):
            keys = [answer_key(it, t) for t in rec["responses"]]
            major = majority_vote(keys)
            rec.update(prm_scores=scores[i * n:(i + 1) * n], bon_index=pick,
                       bon_score=rec["scores"][pick], majority_answer=major,
                       majority_score=0.0 if major is None else rec["scores"][keys.index(major)],
                       oracle=max(rec["scores"]))
        return records

    def run(self) -> dict[tuple[str, str], dict[str, float]]:
        """Evaluate every row; items.jsonl is written as it goes. Returns the table
        {(row label, metric): {benchmark: value in [0, 1]}} on every rank."""
        passes = 1 + bool(self.cfg.best_of_n)
        total = len(self.rows) * passes * sum(len(b.items) for b in self.benchmarks)
        bar = tqdm(total=total, desc="eval", disable=not common.is_rank0())
        table: dict[tuple[str, str], dict[str, float]] = {}
        sink = (self.run_dir / "items.jsonl").open("w") if common.is_rank0() else None
        try:
            self._rows(table, bar, sink)
        finally:
            bar.close()
            if sink is not None:
                sink.close()
            if hasattr(self, "rollout"):
                self.rollout.close()
        return common.broadcast(table)

    def _rows(self, table: dict, bar: tqdm, sink: Any) -> None:
        from prime_mcore.trainers.rollout_side import RolloutSide

        cfg = self.cfg
        for r, (label, path) in enumerate(self.rows):
            source = load_weights(self.engine, cfg.model, path)
            if r == 0:
                self.rollout = RolloutSide(cfg, self.engine, self.tokenizer, self.tok_path,
                                           self.run_dir, verifier_workers=cfg.verifier_workers)
            else:
                self.rollout.sync()
            log.info("row %s: weights from %s", label, source)
            for bench in self.benchmarks:
                ids = [self.prompts.ids(build_prompt(it, cfg.system_prompt))
                       for it in bench.items]
                bar.set_postfix(model=label, bench=bench.name)
                recs: list[dict] = []
                if common.is_rank0():
                    n, sp = self._sampling(bench, *((bench.n, bench.temperature, bench.top_p)
                                                    if cfg.mode == "greedy" else
                                                    (cfg.k, cfg.temperature, cfg.top_p)))
                    self.notes[bench.name] = (f"{len(ids)} items, n={n}, T={sp.temperature:g}, "
                                              f"top_p={sp.top_p:g}, max_tokens={sp.max_new_tokens}")
                    recs = self._pass(bench, ids, n, sp, bar)[0]
                    self._record(table, label, bench.name, recs, n)
                bon = self._best_of_n(bench, ids, bar) if cfg.best_of_n else []
                if bon:
                    self._record_bon(table, label, bench.name, bon)
                for rec in (recs + [dict(r, **{"pass": "bon"}) for r in bon]):
                    sink.write(json.dumps({"model": label, "pass": "main", **rec}) + "\n")

    def _record(self, table: dict, label: str, bench: str, recs: list[dict], n: int) -> None:
        mean = sum(r["score"] for r in recs) / len(recs)
        if self.cfg.mode == "greedy":
            table.setdefault((label, "pass@1"), {})[bench] = mean
            return
        table.setdefault((label, f"avg@{n}"), {})[bench] = mean
        for k in self.cfg.pass_k or [n]:
            if k > n:
                log.warning("pass@%d skipped: only %d samples per item", k, n)
                continue
            est = [pass_at_k(n, int(sum(r["scores"])), k) for r in recs]
            table.setdefault((label, f"pass@{k}"), {})[bench] = sum(est) / len(est)

    def _record_bon(self, table: dict, label: str, bench: str, recs: list[dict]) -> None:
        n, how = self.cfg.best_of_n, self.cfg.prm_aggregate
        for metric, key in ((f"bon@{n} prm-{how}", "bon_score"), (f"maj@{n}", "majority_score"),
                            (f"pass@{n} oracle", "oracle"),
                            (f"avg@{n} T={self.cfg.bon_temperature:g}", "score")):
            table.setdefault((label, metric), {})[bench] = sum(r[key] for r in recs) / len(recs)
