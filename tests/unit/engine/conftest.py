"""In-process engine tests share one world-1 gloo group; it is torn down after this package so
that later tests see no process group."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package", autouse=True)
def _world1_teardown() -> Iterator[None]:
    yield
    from prime_mcore.engine import destroy_distributed

    destroy_distributed()
