"""RMSNorms of the inference path: residual add + RMSNorm, and the output's per-head RMSNorm x gate
(`rms_norm.py`: Triton, `naive.py`: the PyTorch reference)."""
