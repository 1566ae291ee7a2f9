"""SiLU(a) * b over the fused w1|w2 projection (`swiglu.py`: Triton, `naive.py`: the PyTorch reference)."""
