"""gdn2-eval: long-context evaluation harness for Gated DeltaNet-2 and its linear-attention baselines.

Importing the package registers the ``gdn2`` model type with transformers' Auto classes.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .model import GDN2Cache, GDN2Config, GDN2ForCausalLM

AutoConfig.register("gdn2", GDN2Config, exist_ok=True)
AutoModelForCausalLM.register(GDN2Config, GDN2ForCausalLM, exist_ok=True)

from .loading import load_model  # noqa: E402  (needs the registration above)

__version__ = "0.1.0"
__all__ = ["GDN2Cache", "GDN2Config", "GDN2ForCausalLM", "__version__", "load_model"]
