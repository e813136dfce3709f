"""prime_mcore: PRIME (Process Reinforcement through IMplicit rEwards) on Megatron-Core."""

__version__ = "0.1.0"
