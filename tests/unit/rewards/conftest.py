"""Shared fixture: the sandbox mechanisms of this machine."""

import sys

import pytest

from prime_mcore.rewards.sandbox import detect_mechanisms


@pytest.fixture(scope="session")
def mechanisms():
    """The containment this machine allows; sandbox tests skip (with the reason) without it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the sandbox needs Linux")
    mech = detect_mechanisms()
    if mech.problems():
        pytest.skip(f"no sandbox containment here: {mech.problems()}")
    return mech
