"""The mixer's gate activations in one pass (`gdn2_gates.py`: Triton, `naive.py`: the PyTorch reference)."""
