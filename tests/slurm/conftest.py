"""The slurm test layer needs the local cluster: ``bash tools/slurm/slurm_local.sh start``.

Without it these tests fail (a missing cluster must not pass silently in CI) unless
PRIME_MCORE_SKIP_SLURM=1 says to skip them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.slurm.slurm_utils import STATE_DIR, slurm_problem


@pytest.fixture(scope="session", autouse=True)
def slurm_cluster() -> None:
    """Check once that the cluster answers; point clients at its config when needed."""
    if os.environ.get("PRIME_MCORE_SKIP_SLURM") == "1":
        pytest.skip("PRIME_MCORE_SKIP_SLURM=1")
    conf = STATE_DIR / "etc" / "slurm.conf"
    if "SLURM_CONF" not in os.environ and conf.exists():
        os.environ["SLURM_CONF"] = str(conf)  # when /etc/slurm/slurm.conf is someone else's
    problem = slurm_problem()
    if problem is not None:
        pytest.fail(f"the local Slurm cluster is not usable: {problem}. Start it with "
                    "`bash tools/slurm/slurm_local.sh start`, or set PRIME_MCORE_SKIP_SLURM=1 "
                    "to skip the slurm tests.", pytrace=False)


@pytest.fixture
def cancel_on_exit() -> Iterator[list[str]]:
    """Job ids to scancel after the test, so a failed test leaves the cluster free."""
    job_ids: list[str] = []
    yield job_ids
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, check=False)
