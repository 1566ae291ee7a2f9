"""The inference path of GDN-2: the same model as `gdn2_eval.model` (which stays the readable reference and the
oracle), with its weights packed at load time and its elementwise work fused (`model.py`)."""

from .model import GDN2InferenceForCausalLM

__all__ = ["GDN2InferenceForCausalLM"]
