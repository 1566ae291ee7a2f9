"""One resolver for model and tokenizer names, shared by every command that takes one.

A name is looked up, in order, as

1. a built-in demo (`demo`, `demo-kda`, `demo-gdn`), unless a path of that name exists;
2. a local file or directory;
3. a snapshot in the local Hugging Face cache (no network);
4. a Hugging Face Hub repository, only when the hub answers a connection within about a second
   (`hub_reachable`: honours ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and the HTTPS proxy variables).

A name found nowhere is one `UserError` that says what was looked for where and how to make it available offline;
nothing waits on retries. `offline()` switches the Hugging Face libraries to offline mode for a block (a run on
``--data-dir``, or once the hub is known to be unreachable).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 1.0
# owner/name or a bare name, as the hub spells repository ids
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TRUE = {"1", "on", "yes", "true"}
# files of a model repository that loading needs (weights in safetensors or torch format, configs, tokenizer)
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken", "*.bin"]


class NameNotFound(UserError):
    """A model or tokenizer name that is neither built in, local, cached nor reachable on the hub."""


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def hub_offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _proxy_for(host: str, scheme: str) -> str | None:
    """The proxy URL the Hugging Face libraries would use for `host` (requests/httpx read these variables)."""
    no_proxy = os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",") if e.strip()):
        if entry == "*" or host.lower() == entry.lstrip(".") or host.lower().endswith("." + entry.lstrip(".")):
            return None
    names = ("HTTPS_PROXY", "https_proxy") if scheme == "https" else ("HTTP_PROXY", "http_proxy")
    for name in (*names, "ALL_PROXY", "all_proxy"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def probe_target() -> tuple[str, int]:
    """(host, port) a hub request would connect to first: the proxy when one applies, else the endpoint."""
    url = urlsplit(endpoint())
    scheme = url.scheme or "https"
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if scheme == "https" else 80)
    proxy = _proxy_for(host, scheme)
    if proxy:
        p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return p.hostname or "localhost", p.port or (443 if p.scheme == "https" else 80)
    return host, port


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _reachable(host: str, port: int, timeout: float) -> bool:
    # name resolution is not bounded by the socket timeout: run the whole probe in a thread and stop waiting on it
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(_connects(host, port, timeout)), daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or its proxy) opens within `timeout` seconds; False at once when
    ``HF_HUB_OFFLINE`` is set. The answer is kept for the process."""
    if hub_offline_requested():
        return False
    host, port = probe_target()
    return _reachable(host, port, timeout)


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of `repo_id` in the Hugging Face cache, or None; never touches the network."""
    if not _REPO_ID.match(repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, an invalid id, a broken cache entry: all mean "not there"
        return None
    return path if path.is_dir() else None


def looks_like_repo_id(name: str) -> bool:
    """`owner/name` or a bare name: what the hub could hold (an absolute or ./relative path never is)."""
    return bool(_REPO_ID.match(name)) and not name.startswith(".")


def resolve_name(name: str | Path, kind: str = "model", download: bool = False) -> str:
    """The local path `name` stands for, or the hub repository id itself when only the hub has it.

    `kind` ("model" or "tokenizer") only shapes the message. With `download`, a repository found on the hub is
    fetched into the Hugging Face cache and its local snapshot returned."""
    from .demo import DEMOS, demo_dir

    text = str(name)
    if text in DEMOS and not Path(text).exists():
        return str(demo_dir(text))
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    if not looks_like_repo_id(text):
        if kind == "tokenizer":
            raise NameNotFound(f"no tokenizer could be loaded from {text}: no such file or directory")
        raise NameNotFound(f"{kind} path {text} is neither a checkpoint file nor a directory (no such file or "
                           "directory)")
    snapshot = cached_snapshot(text)
    if snapshot is not None:
        return str(snapshot)
    if not hub_reachable():
        raise NameNotFound(_offline_message(text, kind))
    if not download:
        return text
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(text, allow_patterns=MODEL_FILES)
    except Exception as e:  # RepositoryNotFoundError, GatedRepoError, HTTP errors: one line
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise NameNotFound(f"{kind} {text!r} could not be fetched from {endpoint()}: {first}") from None


def _offline_message(name: str, kind: str) -> str:
    from .demo import DEMOS

    host, port = probe_target()
    why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else f"{host}:{port} does not answer"
    return (
        f"{kind} {name!r} is not a built-in name ({', '.join(DEMOS)}), not a local file or directory, and not in "
        f"the Hugging Face cache ({hf_cache_dir()}); the hub ({endpoint()}) cannot be reached ({why}). To use it "
        f"offline, download it where there is internet (`hf download {name}`) and copy the HF cache "
        "here, or pass a local directory; datasets: `gdn2-eval data fetch`"
    )


def check_name(name: str | Path | None, kind: str = "model") -> None:
    """Fail now (one line) if `name` cannot be resolved; nothing is downloaded."""
    if name is not None:
        resolve_name(name, kind)


_OFFLINE_VARS = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _set_constants(offline: bool) -> dict[tuple[str, str], object]:
    """Set the offline flags the Hugging Face libraries read once at import, where they are imported already."""
    old = {}
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, attr):
            old[(module, attr)] = getattr(mod, attr)
            setattr(mod, attr, offline)
    return old


@contextlib.contextmanager
def offline(enabled: bool = True) -> Iterator[None]:
    """Within this block the Hugging Face libraries make no network request (environment and imported flags)."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update(_OFFLINE_VARS)
    saved = _set_constants(True)
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for (module, attr), value in saved.items():
            setattr(sys.modules[module], attr, value)
