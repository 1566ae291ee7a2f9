"""The installed package adds no top-level `kernels` or `tasks` module (Hugging Face ships a `kernels` package that
transformers imports), and a checkout's own `kernels/` folder does not shadow that package when Python runs from the
checkout's root (`python -m pytest`, `python -m gdn2_eval`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FIND = """
import importlib.util, json
out = {}
for name in ("kernels", "tasks"):
    spec = importlib.util.find_spec(name)
    out[name] = spec.origin if spec else None
print(json.dumps(out))
"""


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_installing_adds_no_top_level_kernels_or_tasks(tmp_path):
    import json

    res = _run(FIND, tmp_path)
    assert res.returncode == 0, res.stderr
    for name, origin in json.loads(res.stdout).items():
        assert origin is None or not Path(origin).resolve().is_relative_to(ROOT), (name, origin)


def test_the_checkout_root_on_sys_path_does_not_shadow_hugging_faces_kernels():
    code = "import gdn2_eval.kernels as ours; print(ours.resolve_backend.__module__)\n"
    if importlib.util.find_spec("kernels") is not None:  # Hugging Face's package is installed (transformers >= 5.25)
        code += ("import kernels; assert 'gdn2' not in (kernels.__doc__ or ''), kernels.__file__\n"
                 "import transformers.integrations.hub_kernels\n")
    res = _run(code, ROOT)  # `python -c` puts the current directory first on sys.path
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "gdn2_eval.kernels.dispatch"


HIDE_HF_KERNELS = """
import importlib.machinery, os, sys
ROOT = {root!r}
class HideInstalledKernels:  # a machine without Hugging Face's `kernels` (the GPU machine's image)
    def find_spec(self, name, path=None, target=None):
        if name != "kernels":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, sys.path)
        if spec is not None and spec.origin and os.path.abspath(spec.origin).startswith(ROOT):
            return None
        raise ModuleNotFoundError("No module named 'kernels'", name="kernels")
sys.meta_path.insert(0, HideInstalledKernels())
import importlib.metadata
_version = importlib.metadata.version
def version(name):
    if name == "kernels":
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)
importlib.metadata.version = version
"""


def test_the_checkout_root_on_sys_path_without_hugging_faces_kernels_leaves_transformers_working():
    code = HIDE_HF_KERNELS.format(root=str(ROOT)) + (
        "from transformers.utils.import_utils import is_kernels_available\n"
        "assert not is_kernels_available()\n"
        "import transformers.integrations.hub_kernels\n"
        "import gdn2_eval.kernels as ours; print(ours.resolve_backend.__module__)\n"
    )
    res = _run(code, ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == "gdn2_eval.kernels.dispatch"
