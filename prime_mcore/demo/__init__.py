"""``make demo`` / ``python -m prime_mcore.demo``: the honest SFT -> RLOO/PRIME experiment on
the built-in task (see :mod:`prime_mcore.demo.runner` and :mod:`prime_mcore.demo.arms`)."""

from prime_mcore.demo.arms import ARMS, LABELS, DemoSettings
from prime_mcore.demo.runner import main, run_demo

__all__ = ["ARMS", "LABELS", "DemoSettings", "main", "run_demo"]
