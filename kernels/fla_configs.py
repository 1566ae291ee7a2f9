"""fla's kernel launch configurations chosen ahead of time, per GPU, and kept in the repository.

fla autotunes most of its Triton kernels the first time each is called with a new tuning key: on an H200 that is
~100 s before a new process's first forward. Its autotuner can instead read the chosen configuration from
``$FLA_CONFIG_DIR/<kernel>.json`` (``FLA_CACHE_MODE``: ``fuzzy`` matches a key whose numbers differ, e.g. another
sequence length, and autotunes only kernels with no entry at all). This module

* points fla there before it is imported (:func:`use_pinned_configs`, called by the loaders): the files under
  ``configs/fla/<GPU>/`` (fla's sanitised device name, e.g. ``NVIDIA_H200``), unless the user set either variable;
* writes those files from a process whose fla kernels have been autotuned (:func:`dump_autotuned`, run by
  ``gdn2-eval bench model`` after its warm-up, so the configurations are the ones fla picks on that GPU).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

CONFIG_ROOT = Path(__file__).parent / "configs" / "fla"
# exact key, then the same key with other numbers (sequence lengths), then fla's own autotuning
MODE = "fuzzy"


def gpu_dir_name(device_name: str) -> str:
    """fla's directory name for a device (`fla.ops.utils.cache.sanitize_gpu_name`)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", device_name).strip("_") or "unknown_gpu"


def pinned_dir(device_name: str) -> Path:
    return CONFIG_ROOT / gpu_dir_name(device_name)


def use_pinned_configs() -> Path | None:
    """Steer fla to the configurations kept here for this GPU. Must run before fla's kernels are imported (fla reads
    FLA_CACHE_MODE once); a no-op without CUDA, without configs for this GPU, or when the user chose otherwise."""
    if "FLA_CONFIG_DIR" in os.environ or "FLA_CACHE_MODE" in os.environ or "fla.ops.utils.cache" in sys.modules:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    where = pinned_dir(torch.cuda.get_device_name(0))
    if not any(where.glob("*.json")):
        return None
    os.environ["FLA_CONFIG_DIR"], os.environ["FLA_CACHE_MODE"] = str(where), MODE
    return where


def _config_dict(cfg) -> dict:
    return {"kwargs": dict(cfg.kwargs), "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
            "num_ctas": getattr(cfg, "num_ctas", 1), "maxnreg": getattr(cfg, "maxnreg", None)}


def dump_autotuned(dest: Path) -> list[str]:
    """Write every fla autotuner's chosen configurations in this process as fla's config files under `dest`.
    Returns the kernel names written."""
    import gc

    import triton
    from fla.ops.utils.cache import AutotuneKey, CachedAutotuner
    from triton.runtime.autotuner import Autotuner

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for tuner in (o for o in gc.get_objects() if issubclass(type(o), Autotuner) and o.cache):
        name = getattr(tuner, "kernel_name", None) if issubclass(type(tuner), CachedAutotuner) else None
        if name is None:  # plain triton.autotune kernels do not read fla's files
            continue
        entries = {AutotuneKey.key_hash(list(key)): {"autotune_key": AutotuneKey.normalize_autotune_key(list(key)),
                                                     "config": _config_dict(cfg)}
                   for key, cfg in tuner.cache.items()}
        path = dest / f"{name}.json"
        if path.exists():  # one kernel name can back several autotuners (variants): keep every entry
            entries = {**json.loads(path.read_text()).get("autotune_entries", {}), **entries}
        path.write_text(json.dumps({"kernel_name": name, "triton_version": triton.__version__,
                                    "autotune_entries": entries}, indent=1, sort_keys=True) + "\n")
        written.append(name)
    return sorted(set(written))
