"""Offline data work around PRIME: curation of RL problems with a validator model (the
agreement rule, sharding, the summary) and acceptance of teacher traces for SFT.

``agreement`` and ``traces`` are pure; ``runner`` drives ``python -m prime_mcore.curate``,
``prime_mcore.sft_data`` uses ``sampling`` and ``traces``. Import from the submodules.
"""
