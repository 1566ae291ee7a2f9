"""Depthwise causal short convolution + SiLU over the concatenated q/k/v channels (`short_conv.py`: Triton,
`naive.py`: the PyTorch reference)."""
