"""x @ W^T (+ bias) for a few rows, as a decode step has (`skinny.py`: Triton, `naive.py`: the PyTorch reference)."""
