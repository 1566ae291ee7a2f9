"""Registration of the ``gdn2`` model type with transformers' Auto classes and of the ``gdn2`` backend with lm-eval.

`import gdn2_eval` imports neither torch, transformers nor lm-eval. It installs import hooks instead: when
transformers' Auto modules or lm-eval's model registry are first imported (by anyone), the registration runs right
after them, so `AutoModelForCausalLM.from_pretrained(gdn2_dir)` and `lm_eval.simple_evaluate(model="gdn2", ...)`
work after `import gdn2_eval` as before. If those modules are imported already, it runs at once.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading


def register_model() -> None:
    from transformers.models.auto import AutoConfig, AutoModelForCausalLM

    from .model.configuration_gdn2 import GDN2Config
    from .model.modeling_gdn2 import GDN2ForCausalLM

    AutoConfig.register("gdn2", GDN2Config, exist_ok=True)
    AutoModelForCausalLM.register(GDN2Config, GDN2ForCausalLM, exist_ok=True)


def register_backend() -> None:
    """The ``gdn2`` backend as a lazy entry of lm-eval's model registry (`gdn2_eval.lm_backend` loads on first use).

    Called once lm-eval's built-in models are registered: an entry in an empty registry would stop lm-eval from
    loading its own."""
    from lm_eval.api.registry import model_registry

    try:
        model_registry.register("gdn2", target="gdn2_eval.lm_backend:GDN2LM")
    except ValueError:  # already registered (the class itself, once lm_backend is imported)
        pass


def _initializing(module) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _after_transformers(loaded: str) -> None:
    """Register the model once it can be imported without a cycle: transformers imports its Auto package while its
    own modeling module (which ours needs) is still being imported, so then the registration waits for that."""
    ours = sys.modules.get("gdn2_eval.model")
    if ours is not None:
        if not _initializing(ours):  # else its __init__ registers when it is done
            register_model()
        return
    if loaded != "transformers.modeling_utils" and any(
            name.startswith("transformers.") and name != loaded and _initializing(mod)
            for name, mod in list(sys.modules.items())):
        return  # transformers is part-way through an import: the hook on its modeling module registers
    importlib.import_module("gdn2_eval.model")  # registers at the end of its __init__


# module -> what runs right after it is imported
HOOKS = {
    "transformers.models.auto": lambda: _after_transformers("transformers.models.auto"),
    "transformers.modeling_utils": lambda: _after_transformers("transformers.modeling_utils"),
    "lm_eval.models": register_backend,
}


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, hook) -> None:
        self.loader, self.hook = loader, hook

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.hook()

    def __getattr__(self, name):  # get_resource_reader, is_package, ... of the real loader
        return getattr(self.loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, name, path, target=None):
        hook = HOOKS.get(name)
        if hook is None or getattr(self._busy, "name", None) == name:
            return None
        self._busy.name = name
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, hook)
        return spec


_FINDER = _AfterImport()


def install() -> None:
    """Register now with what is imported, and on import for the rest."""
    pending = False
    for name, hook in HOOKS.items():
        if name in sys.modules:
            if not _initializing(sys.modules[name]):
                hook()
        else:
            pending = True
    if pending and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
