"""Fixtures shared by the rollout tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tiny_model import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen2"))
