"""Kernels for the GDN-2 recurrence (imported as ``gdn2_eval.kernels``).

Layout follows fla: ``gdn2/naive.py`` (float64 references), ``gdn2/torch_impl.py`` (PyTorch path),
``gdn2/chunk.py`` and ``gdn2/fused_recurrent.py`` (Triton inference kernels); ``dispatch.py`` picks one.
"""

from .dispatch import BACKENDS, ENV_VAR, available_backends, gdn2_recurrence, resolve_backend

__all__ = ["BACKENDS", "ENV_VAR", "available_backends", "gdn2_recurrence", "resolve_backend"]
