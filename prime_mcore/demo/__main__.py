"""``python -m prime_mcore.demo``."""

from prime_mcore.demo.runner import main

main()
