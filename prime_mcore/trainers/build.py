"""``build_rl(cfg)``: a short sequence of ``build_*`` calls that assembles the PRIME loop.

Variants are chosen here, once: ``algo.name=rloo`` swaps the PRM update for
``OutcomeOnly``; ``prm.update`` picks ``PRMAfter`` / ``PRMBefore`` / ``PRMFrozen``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prime_mcore.config import RLConfig
from prime_mcore.trainers import common
from prime_mcore.trainers.collector import PromptSource, RolloutCollector
from prime_mcore.trainers.prime import Loop, PrimeTrainer
from prime_mcore.trainers.roles import PRM_UPDATES, ImplicitPRM, OutcomeOnly, Policy
from prime_mcore.trainers.rollout_side import RolloutSide

log = logging.getLogger("prime_mcore")


def build_data(cfg: RLConfig, run_dir: Path):
    """(train examples, val examples, tokenizer path)."""
    d = cfg.data
    if d.source == "builtin":
        paths = common.prepare_builtin(d, run_dir / "data")
        train_files, val_files, tok = [paths["rl_train"]], [paths["rl_val"]], paths["tokenizer"]
    else:
        missing = [f for f in [*d.train_files, *d.val_files] if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"data files not found: {missing}")
        train_files, val_files = d.train_files, d.val_files
        tok = cfg.model.tokenizer_path or cfg.model.hf_path
    tok = cfg.model.tokenizer_path or tok
    if tok is None:
        raise ValueError("no tokenizer: set model.tokenizer_path or model.hf_path")
    train = common.load_examples(train_files, skip_bad_rows=d.skip_bad_rows,
                                 system_prompt=d.system_prompt)
    val = (common.load_examples(val_files, skip_bad_rows=d.skip_bad_rows,
                                system_prompt=d.system_prompt) if val_files else [])
    return train, val, Path(tok)


def build_engines(cfg: RLConfig):
    """Policy, PRM and reference engines, all initialised from the same (SFT) weights."""
    from prime_mcore.engine import build_engine

    responses = cfg.data.train_batch_size * cfg.rollout.n_samples
    policy_steps = cfg.run.max_steps * cfg.algo.ppo_epochs * (responses // cfg.algo.mini_batch_size)
    seed = cfg.run.seed
    engines = {"policy": build_engine(cfg.model, cfg.parallel, cfg.algo.optim, role="policy",
                                      seed=seed, total_steps=policy_steps)}
    if cfg.algo.name == "prime":
        prm_steps = cfg.run.max_steps * (responses // cfg.prm.mini_batch_size)
        engines["prm"] = build_engine(cfg.model, cfg.parallel, cfg.prm.optim, role="prm",
                                      seed=seed, total_steps=prm_steps)
    if (cfg.algo.name == "prime" and cfg.prm.ref_type == "freeze") or cfg.algo.kl_coef > 0:
        engines["reference"] = build_engine(cfg.model, cfg.parallel, None, role="reference",
                                            seed=seed)
    for engine in engines.values():
        source = common.init_weights(engine, cfg.model)
    log.info("policy/PRM/reference initialised from %s", source)
    return engines


def _prm_reference_is_kl_reference(cfg: RLConfig) -> bool:
    """The PRM's reference log-probs are the KL loss's: frozen initial weights, at T = 1."""
    return (cfg.algo.name == "prime" and cfg.prm.ref_type == "freeze"
            and (cfg.rollout.temperature or 1.0) == 1.0)


def build_prm_update(cfg: RLConfig, engines: dict):
    if cfg.algo.name == "rloo":
        return OutcomeOnly()
    info = engines["policy"].info
    prm = ImplicitPRM(engines["prm"], engines.get("reference"), beta=cfg.prm.beta,
                      convention=cfg.algo.convention, granularity=cfg.prm.granularity,
                      norm=cfg.prm.norm, norm_scope=cfg.prm.norm_scope, dp_size=info.dp,
                      group_size=cfg.rollout.n_samples, mini_batch_size=cfg.prm.mini_batch_size,
                      micro_batch_size=cfg.prm.micro_batch_size,
                      use_policy_as_ref=cfg.prm.ref_type == "policy",
                      norm_floor=cfg.prm.norm_floor)
    return PRM_UPDATES[cfg.prm.update](prm)


def build_rl(cfg: RLConfig) -> PrimeTrainer:
    """Assemble the RL loop of ``cfg`` (collective: every rank calls it)."""
    from prime_mcore.engine import CheckpointManager, init_distributed
    from prime_mcore.rollout import LogprobGapMonitor, SamplingParams

    run_dir = common.run_dir_of(cfg.run.output_dir, cfg.run.name)
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    common.seed_all(cfg.run.seed)
    common.write_config(cfg, run_dir)
    train, val, tok_path = build_data(cfg, run_dir)
    from prime_mcore.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_path)
    prompts = common.PromptTokenizer(tokenizer, cfg.rollout.max_prompt_length)
    engines = build_engines(cfg)
    policy = Policy(engines["policy"], temperature=cfg.rollout.temperature or 1.0,
                    mini_batch_size=cfg.algo.mini_batch_size,
                    micro_batch_size=cfg.algo.micro_batch_size, clip_eps=cfg.algo.clip_eps,
                    dual_clip=cfg.algo.dual_clip, agg=cfg.algo.loss_agg,
                    ppo_epochs=cfg.algo.ppo_epochs, shuffle=cfg.algo.shuffle,
                    entropy_coef=cfg.algo.entropy_coef, kl_coef=cfg.algo.kl_coef,
                    reference=engines.get("reference"),
                    reuse_prm_reference=_prm_reference_is_kl_reference(cfg))
    rollout = RolloutSide(cfg, engines["policy"], tokenizer, tok_path, run_dir)
    source = PromptSource(len(train), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    collector = None
    if common.is_rank0():
        collector = RolloutCollector(
            examples=train, prompt_ids=lambda i: prompts.ids(train[i].prompt, key=i),
            decode=prompts.decode, source=source, backend=rollout.backend,
            verifier=rollout.verify, sampling=SamplingParams.from_config(cfg.rollout),
            n=cfg.rollout.n_samples, train_batch_size=cfg.data.train_batch_size,
            low=cfg.algo.filter_low, high=cfg.algo.filter_high, filter_groups=True,
            filter_truncated=cfg.algo.filter_truncated,
            oversample_factor=cfg.algo.oversample_factor, max_rounds=cfg.algo.max_refill_rounds)
    loop = Loop(
        policy=policy, prm_update=build_prm_update(cfg, engines), collector=collector,
        source=source, sync=rollout.sync, evaluate=lambda: rollout.evaluate(val, prompts),
        checkpoints=CheckpointManager(run_dir / "checkpoints", keep_last=cfg.run.keep_last),
        engines={k: v for k, v in engines.items() if v.trainable},
        pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
        group_size=cfg.rollout.n_samples, convention=cfg.algo.convention,
        rm_coef=cfg.algo.rm_coef, gt_coef=cfg.algo.gt_coef,
        monitor=LogprobGapMonitor(cfg.rollout.logprob_gap_warn), seed=cfg.run.seed,
        prompt_ids=lambda i: prompts.ids(train[i].prompt, key=i), close=rollout.close)
    return PrimeTrainer(loop, run_dir=run_dir, max_steps=cfg.run.max_steps,
                        save_every=cfg.run.save_every, eval_every=cfg.run.eval_every,
                        resume=cfg.run.resume)
