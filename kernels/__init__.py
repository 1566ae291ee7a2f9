"""Kernels for the GDN-2 recurrence (imported as ``gdn2_eval.kernels``).

Layout follows fla: ``gdn2/naive.py`` (float64 references), ``gdn2/torch_impl.py`` (PyTorch path),
``gdn2/chunk.py`` and ``gdn2/fused_recurrent.py`` (Triton inference kernels); ``dispatch.py`` picks one.
"""

if __name__ == "kernels":  # pragma: no cover - only when the checkout's root is on sys.path
    # Imported as a top-level module: `python -m ...` run from the checkout puts its root on sys.path, where this
    # folder shadows Hugging Face's `kernels` package (which transformers imports). Hand the name to that package;
    # this folder is always `gdn2_eval.kernels`.
    import importlib
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _root]
    del sys.modules["kernels"]
    try:
        sys.modules["kernels"] = importlib.import_module("kernels")
    except ImportError:
        # Not installed: leave what a stray namespace folder leaves (no `__file__`, no version), which transformers'
        # package probe reads as "absent" rather than failing `import transformers` on a machine without it.
        import types

        _absent = types.ModuleType("kernels", "Not Hugging Face's kernels package: the checkout's kernels/ folder.")
        _absent.__file__ = None
        _absent.__path__ = []
        sys.modules["kernels"] = _absent
    finally:
        sys.path[:] = _saved
else:
    from .dispatch import BACKENDS, ENV_VAR, available_backends, gdn2_recurrence, resolve_backend

    __all__ = ["BACKENDS", "ENV_VAR", "available_backends", "gdn2_recurrence", "resolve_backend"]
