"""transformers' linear-attention models on the CPU: their own PyTorch paths, not fla's kernels.

transformers' Gated DeltaNet / KDA layers (Qwen3-Next, KimiLinear, ...) pick fla's Triton kernels whenever fla is
importable, which it always is here (a dependency); without a GPU those kernels fail (`RuntimeError: 0 active
drivers`). transformers wraps each such kernel around the PyTorch function it falls back to
(`use_kernel_func_from_hub_with_fallback`, which keeps that function as `__wrapped__`); on a machine without CUDA,
`use_torch_paths` points the model's modeling module back at those PyTorch functions. Models of other layouts, and
every model on a CUDA machine, are left as they are.
"""

from __future__ import annotations

import sys

import torch


def _kernel_wrappers(module) -> dict[str, object]:
    """Module-level functions that transformers' hub-kernel fallback wrapped: name -> the PyTorch function."""
    found = {}
    for name, fn in vars(module).items():
        inner = getattr(fn, "__wrapped__", None)
        code = getattr(fn, "__code__", None)
        if callable(inner) and code is not None and code.co_filename.endswith("hub_kernels.py"):
            found[name] = inner
    return found


def use_torch_paths(model: torch.nn.Module) -> list[str]:
    """On a machine without CUDA, make `model`'s modeling module call its PyTorch kernels. Returns what it changed
    (nothing for GDN-2, fla's own models, attention-only models, or when CUDA is there)."""
    if torch.cuda.is_available():
        return []
    changed = []
    for cls in {type(m) for m in model.modules()}:
        module = sys.modules.get(cls.__module__)
        if module is None or not cls.__module__.startswith("transformers.models."):
            continue
        for name, torch_fn in _kernel_wrappers(module).items():
            setattr(module, name, torch_fn)
            changed.append(f"{cls.__module__}.{name}")
    return sorted(set(changed))
