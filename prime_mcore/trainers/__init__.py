"""Training loops: sft.py, prime.py (the RL loop), eval.py, and their metrics/report."""
