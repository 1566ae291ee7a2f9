"""gdn2-eval: long-context evaluation harness for Gated DeltaNet-2 and its linear-attention baselines.

Importing the package registers the ``gdn2`` model type with transformers' Auto classes.
"""

from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

# In a source checkout, `kernels/` and `tasks/` sit beside this package and are installed into it (pyproject's
# package-dir). So that the checkout also works without installation (PYTHONPATH=.), look for them there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "kernels" / "gdn2" / "torch_impl.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (the package's own __path__)

from .model import GDN2Cache, GDN2Config, GDN2ForCausalLM  # noqa: E402  (after the path set-up)

AutoConfig.register("gdn2", GDN2Config, exist_ok=True)
AutoModelForCausalLM.register(GDN2Config, GDN2ForCausalLM, exist_ok=True)

from .lm_backend import GDN2LM  # noqa: E402  (registers the `gdn2` lm-eval backend)
from .loading import load_model  # noqa: E402  (needs the registration above)

__version__ = "0.1.0"
__all__ = ["GDN2LM", "GDN2Cache", "GDN2Config", "GDN2ForCausalLM", "__version__", "load_model"]
