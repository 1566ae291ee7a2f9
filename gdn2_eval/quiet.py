"""Library messages a run of this harness should not show: each says something that is not the user's to act on,
because the harness made that choice itself. Installed on `import gdn2_eval` (cheap: loggers and warning filters
only, no library is imported)."""

from __future__ import annotations

import logging
import warnings


class _Drop(logging.Filter):
    """Drops records whose message contains any of `fragments`."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(f in msg for f in self.fragments)


FILTERS = {
    # lm-eval's two-line hint that custom kwargs can go to `--metadata`, logged for every task built by a
    # `custom_dataset` function (each RULER cell): `gdn2-eval run` passes those kwargs itself
    "lm_eval.api.task": _Drop("can be passed to `--metadata`"),
    # newer transformers renamed `past_key_values` to `cache` and warns on the old name; the GDN-2 model keeps the
    # name every supported version accepts (5.17 has no `cache`)
    "transformers.utils.generic": _Drop("are deprecated. Use `cache` instead"),
    # the backend hands lm-eval's HF class a model it loaded (and, in benchmarks, the stock class one too)
    "lm_eval.models.huggingface": _Drop("`pretrained` model kwarg is not of type `str`",
                                        "Passed an already-initialized model through `pretrained`"),
    # on a machine without CUDA the loaders steer transformers' linear-attention layers to their PyTorch paths on
    # purpose (`gdn2_eval.torch_paths`; the run records the path)
    "transformers.integrations.hub_kernels": _Drop("is falling back to its reference PyTorch implementation"),
}


def install() -> None:
    for name, drop in FILTERS.items():
        logger = logging.getLogger(name)
        if drop not in logger.filters:
            logger.addFilter(drop)
    # fla says so on import without a GPU; the loaders keep fla's kernels off the CPU and say why when needed
    warnings.filterwarnings("ignore", message="Triton is not supported on current platform", category=UserWarning)


def lm_eval_bars() -> None:
    """lm-eval draws two bars per task before any request runs (building the requests, checking the request
    cache), each over in a moment; a run shows its own line per task and the backend's bar over the requests.
    Called by the runner (it imports lm-eval, which `install` must not)."""
    import functools

    import lm_eval.api.model
    import lm_eval.api.task
    from tqdm import tqdm

    for module in (lm_eval.api.task, lm_eval.api.model):
        if getattr(module, "tqdm", None) is tqdm:
            module.tqdm = functools.partial(tqdm, disable=True)
