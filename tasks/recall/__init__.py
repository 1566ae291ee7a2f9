"""lm-eval task definitions of the real-world recall suite (Table 4), "Just read twice" protocol (see utils.py)."""
