from .cache import GDN2Cache
from .configuration_gdn2 import GATE_ABLATIONS, PRESETS, GDN2Config
from .modeling_gdn2 import GDN2ForCausalLM, GDN2Model

__all__ = ["GATE_ABLATIONS", "PRESETS", "GDN2Cache", "GDN2Config", "GDN2ForCausalLM", "GDN2Model"]

from ..registration import register_model as _register  # noqa: E402  (needs the classes above)

_register()
