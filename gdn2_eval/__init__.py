"""gdn2-eval: long-context evaluation harness for Gated DeltaNet-2 and its linear-attention baselines.

Importing the package is cheap: it imports neither torch, transformers nor lm-eval. The ``gdn2`` model type is
registered with transformers' Auto classes, and the ``gdn2`` backend with lm-eval, when those are first used
(`gdn2_eval.registration`); the names below load on first access.
"""

from pathlib import Path

# In a source checkout, `kernels/` and `tasks/` sit beside this package and are installed into it (pyproject's
# package-dir). So that the checkout also works without installation (PYTHONPATH=.), look for them there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "kernels" / "gdn2" / "torch_impl.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own __path__)

from . import quiet, registration  # noqa: E402  (after the path set-up)

quiet.install()
registration.install()

__version__ = "0.1.0"
__all__ = ["GDN2LM", "GDN2Cache", "GDN2Config", "GDN2ForCausalLM", "__version__", "load_model"]

# public name -> the module that defines it, imported on first access
_LAZY = {
    "GDN2LM": "lm_backend",
    "GDN2Cache": "model",
    "GDN2Config": "model",
    "GDN2ForCausalLM": "model",
    "load_model": "loading",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
