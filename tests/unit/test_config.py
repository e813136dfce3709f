"""Configuration: every YAML composes, defaults are the paper's, bad values fail clearly."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from prime_mcore.config import (
    AlgoConfig,
    ClusterConfig,
    ModelConfig,
    ParallelConfig,
    RLConfig,
    register_configs,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def load(overrides=(), name="rl"):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides))
    return cfg


def group_options():
    for group_dir in sorted(p for p in CONFIGS.iterdir() if p.is_dir()):
        for yaml in sorted(group_dir.glob("*.yaml")):
            yield group_dir.name, yaml.stem


def primary_config(group: str, option: str) -> str:
    """Experiments name their job by prefix (sft_*, eval_*); everything else composes rl.yaml."""
    if group == "experiment":
        return option.split("_")[0] if option.split("_")[0] in ("sft", "eval") else "rl"
    return "eval" if group == "suite" else "rl"


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_yaml_composes_into_dataclasses(group, option):
    name = primary_config(group, option)
    obj = OmegaConf.to_object(load([f"{group}={option}"], name=name))
    assert type(obj).__name__ == {"rl": "RLConfig", "sft": "SFTConfig", "eval": "EvalConfig"}[name]


def test_unknown_experiment_is_an_error():
    with pytest.raises(ConfigCompositionException, match="tiny_cpuu"):
        load(["experiment=tiny_cpuu"])


def test_defaults_are_the_papers_run():
    cfg: RLConfig = OmegaConf.to_object(load())
    assert cfg.rollout.n_samples == 4 and cfg.rollout.temperature == 1.0
    assert cfg.rollout.max_response_length == 3072 and cfg.data.train_batch_size == 256
    assert cfg.prm.beta == 0.05 and cfg.prm.update == "after" and cfg.prm.norm_floor == 0.0
    assert cfg.prm.optim.lr == 1e-6 and cfg.prm.optim.weight_decay == 0.0
    assert cfg.prm.optim.clip_grad == 10.0 and cfg.prm.mini_batch_size == 256
    assert cfg.algo.optim.lr == 5e-7 and cfg.algo.optim.clip_grad == 1.0
    assert cfg.algo.clip_eps == 0.2 and cfg.algo.kl_coef == 0.0 and cfg.algo.entropy_coef == 0.0
    assert (cfg.algo.filter_low, cfg.algo.filter_high) == (0.2, 0.8)
    assert cfg.algo.convention == "orig" and cfg.run.max_steps == 592
    assert cfg.model.hidden_size == 3584 and cfg.model.num_query_groups == 4


def test_misspelt_override_fails_with_the_key_name():
    with pytest.raises(ConfigCompositionException) as err:
        load(["prm.betaa=0.1"])
    assert "betaa" in str(err.value.__cause__ or err.value)


def test_bad_option_value_names_field_and_value():
    with pytest.raises(ValueError, match=r"prm.update='sometimes'"):
        OmegaConf.to_object(load(["prm.update=sometimes"]))


def test_negative_norm_floor_is_an_error():
    with pytest.raises(ValueError, match=r"prm.norm_floor=-0.5"):
        OmegaConf.to_object(load(["prm.norm_floor=-0.5"]))
    with pytest.raises(ValueError, match=r"prm.norm_floor=1.0 .* prm.norm='none'"):
        OmegaConf.to_object(load(["prm.norm_floor=1.0", "prm.norm=none"]))


def test_regulariser_coefficients():
    with pytest.raises(ValueError, match=r"algo.kl_coef=-0.1 must be >= 0"):
        OmegaConf.to_object(load(["algo.kl_coef=-0.1"]))
    with pytest.raises(ValueError, match=r"algo.entropy_coef=-0.001 must be >= 0"):
        OmegaConf.to_object(load(["algo.entropy_coef=-0.001"]))
    # the veRL preset carries veRL's prime entropy bonus (spec 5.1); ORIG's is 0
    verl = OmegaConf.to_object(load(["algo=prime_verl"]))
    assert verl.algo.entropy_coef == 0.001 and verl.algo.kl_coef == 0.0


def test_batch_not_divisible_by_mini_batch_names_fields():
    with pytest.raises(ValueError) as err:
        OmegaConf.to_object(load(["data.train_batch_size=10", "algo.mini_batch_size=16",
                                  "algo.micro_batch_size=8"]))
    msg = str(err.value)
    assert "data.train_batch_size" in msg and "40" in msg and "algo.mini_batch_size=16" in msg


def test_layout_checks():
    with pytest.raises(ValueError, match=r"parallel.tp \* parallel.pp = 2 \* 2 = 4"):
        RLConfig(parallel=ParallelConfig(tp=2, pp=2),
                 cluster=ClusterConfig(nodes=1, tasks_per_node=6, gpus_per_node=6))
    with pytest.raises(ValueError, match="parallel.tp=8 must divide"):
        RLConfig(parallel=ParallelConfig(tp=8), model=ModelConfig(num_query_groups=4),
                 cluster=ClusterConfig())
    with pytest.raises(ValueError, match="filter_low"):
        AlgoConfig(filter_low=0.9, filter_high=0.1)
    with pytest.raises(ValueError, match="num_attention_heads=28 is not divisible"):
        ModelConfig(num_query_groups=5)
