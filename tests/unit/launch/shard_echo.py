"""A stand-in for prime_mcore.curate in launcher tests: returns the shard it was given."""

from prime_mcore.config import CurateConfig


def main(cfg: CurateConfig) -> dict[str, int | None]:
    return {"shard": cfg.curate.shard_index, "shards": cfg.curate.num_shards}
