"""Option checks the command line runs before any work starts: each bad value is one `UserError` naming the option,
the value and what it accepts (the CLI prints it as one line, exit code 2)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .errors import UserError

BASELINES = ("paper", "none")
FAMILIES = ("recurrent", "hybrid")
CONVERT_DTYPES = ("bf16", "fp16", "fp32")
RUN_DTYPES = ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
PPL_PROTOCOLS = ("rolling", "carry")  # gdn2_eval.lm_backend.PPL_PROTOCOLS (not imported: it pulls in lm-eval)
IMPLS = ("auto", "reference", "inference")  # gdn2_eval.loading.IMPLS (not imported: it pulls in torch)
BENCH_KERNELS = ("auto", "fla", "triton")
BENCH_PARTS = ("ceilings", "cold_start", "prefill", "decode", "agreement", "profile")
SHARE_MODES = ("auto", "on", "off")
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9, "gb": 1e9,
          "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps|meta)$")


def at_least(option: str, value: int | float | None, minimum: int | float) -> None:
    if value is not None and value < minimum:
        raise UserError(f"{option} must be at least {minimum}, got {value}")


def positive(option: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise UserError(f"{option} must be greater than 0, got {value}")


def choice(option: str, value: str | None, choices: Iterable[str], what: str | None = None) -> str | None:
    """`value` one of `choices`; else "unknown WHAT 'value' (--option); choose one of: ..."."""
    choices = tuple(choices)
    if value is not None and value not in choices:
        what = what or option.lstrip("-").replace("-", " ")
        raise UserError(f"unknown {what} {value!r} ({option}); choose one of: {', '.join(choices)}")
    return value


def size(option: str, value: object) -> int | None:
    """A size in bytes such as 8GiB, 512MB or 1000000 (None stays None); anything else, or under one byte, is an
    error."""
    if value is None:
        return None
    m = _SIZE.fullmatch(str(value))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise UserError(f"{option} must be a positive size such as 8GiB or 512MB, not {value!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def not_empty(option: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise UserError(f"{option} must not be empty")


def existing_file(option: str, path: Path | None) -> None:
    if path is not None and not Path(path).is_file():
        what = "no such file" if not Path(path).exists() else "is not a file"
        raise UserError(f"{option} {path}: {what}")


def existing_dir(option: str, path: Path | None) -> None:
    if path is not None and not Path(path).is_dir():
        what = "no such directory" if not Path(path).exists() else "is not a directory"
        raise UserError(f"{option} {path}: {what}")


def existing_paths(option: str, paths: Iterable[Path] | None, what: str = "file or directory") -> None:
    for path in paths or ():
        if not Path(path).exists():
            raise UserError(f"{path}: no such {what} ({option})")


def writable_file(option: str, path: Path | None) -> None:
    """An output file: not a directory, and not below an existing file."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory, not a file")
    _parent_not_a_file(option, path)


def bench_report(option: str, path: Path) -> None:
    """A bench report to resume: absent (nothing to keep), or a JSON object with its cells."""
    if not Path(path).exists():
        return
    import json

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{option} {path}: not a bench report to resume ({type(e).__name__})") from None
    if not isinstance(report, dict) or not isinstance(report.get("cells"), dict):
        raise UserError(f"{option} {path}: not a bench report to resume (no cells)")


def writable_dir(option: str, path: Path | None) -> None:
    """An output directory: not an existing file, and not below one."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a directory")
    _parent_not_a_file(option, path)


def _parent_not_a_file(option: str, path: Path) -> None:
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option} {path}: {parent} is a file, not a directory")
            return


def batch_size(value: str) -> str:
    text = str(value).strip().lower()
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        raise UserError(f"--batch-size must be a whole number of requests or 'auto', got {value!r}") from None
    at_least("--batch-size", n, 1)
    return str(n)


def device(value: str | None, option: str = "--device") -> str | None:
    """`auto`, `cpu`, `cuda`, `cuda:N` (N below the number of CUDA devices), ... A CUDA device on a machine without
    one is refused here, before a model is loaded."""
    if value is None:
        return value
    text = value.strip().lower()
    if not _DEVICE.match(text):
        raise UserError(f"{option} {value!r} is not a device: auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{option} {value}: this machine has no CUDA device (torch {torch.__version__}); use "
                            "--device cpu or auto")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= count:
            raise UserError(f"{option} {value}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return text


def lengths(option: str, value: str | None) -> list[int] | None:
    if value is None:
        return None
    from .ruler import RulerError, parse_lengths

    try:
        return parse_lengths(value)
    except RulerError as e:
        raise UserError(f"{option}: {e}") from None


def ruler_cells(option: str, value: str | None, only_lengths: str | None = None) -> list[str]:
    """Cells of the paper's RULER grid as `task@length` (length as 1k or 1024), kept to `only_lengths` when given;
    returned with the length in tokens (`niah_single_1@1024`)."""
    if not value:
        return []
    from .ruler import PAPER_GRID, RulerError, parse_length

    keep = lengths("--lengths", only_lengths)
    cells = []
    for item in (p.strip() for p in value.split(",") if p.strip()):
        task, _, n = item.partition("@")
        try:
            tokens = parse_length(n)
        except RulerError:
            tokens = None
        if tokens not in PAPER_GRID.get(task, ()) or (keep is not None and tokens not in keep):
            grid = ", ".join(f"{t}@{'/'.join(f'{m // 1024}k' for m in ns)}" for t, ns in PAPER_GRID.items())
            raise UserError(f"{option}: {item!r} is not a cell of the grid run ({grid})")
        cells.append(f"{task}@{tokens}")
    return cells


def length(option: str, value: str) -> int:
    from .ruler import RulerError, parse_length

    try:
        return parse_length(value)
    except RulerError as e:
        raise UserError(f"{option}: {e}") from None


def gate_ablation(value: str | None) -> str | None:
    if value is None:
        return None
    from .model.configuration_gdn2 import GATE_ABLATIONS

    return choice("--gate-ablation", value, GATE_ABLATIONS)


def kernel(value: str | None, device_name: str | None = None) -> str | None:
    """One of the kernel names, and one that runs on `device_name` (fla and triton need CUDA)."""
    if value is None:
        return None
    from .kernels.dispatch import BACKENDS, resolve_backend

    choice("--kernel", value, BACKENDS)
    if value is not None and device_name is not None:
        import torch

        dev = device_name if device_name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolve_backend(value, dev)
        except ValueError as e:
            raise UserError(f"--kernel {value}: {e}") from None
    return value


def preset(option: str, value: str, baselines: bool = False) -> str:
    """A GDN-2 preset name; with `baselines`, also one of fla's baselines the benchmarks build (`FLA_BASELINES`)."""
    from .model.configuration_gdn2 import PRESETS

    if baselines:
        from .bench.backend import FLA_BASELINES

        return choice(option, value, (*PRESETS, *FLA_BASELINES))
    return choice(option, value, PRESETS)


def arch(value: str | None) -> None:
    """A preset name or a JSON file of the authors' config fields that makes a valid config."""
    if value is not None:
        from .model.configuration_gdn2 import GDN2Config

        GDN2Config.from_arch(value)


def comma_subset(option: str, value: str, allowed: Iterable[str]) -> list[str]:
    allowed = tuple(allowed)
    items = [p.strip() for p in value.split(",") if p.strip()]
    if not items:
        raise UserError(f"{option} is empty; choose from {', '.join(allowed)}")
    bad = [p for p in items if p not in allowed]
    if bad:
        raise UserError(f"{option}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}")
    return items


def shapes(value: str | None) -> tuple[tuple[int, int], ...] | None:
    if value is None:
        return None
    try:
        todo = tuple(tuple(int(n) for n in s.lower().split("x")) for s in value.split(",") if s.strip())
    except ValueError:
        todo = ()
    if not todo or any(len(s) != 2 or min(s) < 1 for s in todo):
        raise UserError(f"--shapes must look like 1x4096,8x4096, got {value!r}")
    return todo


def batches(option: str, value: str | None) -> list[int] | None:
    """Comma-separated batch sizes, each at least 1 (e.g. 1,16,64)."""
    if value is None:
        return None
    try:
        sizes = [int(v) for v in value.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"{option} must be comma-separated batch sizes of at least 1 (e.g. 1,16,64), got {value!r}")
    return sizes


def ruler_task(value: str) -> None:
    from .ruler import TASKS

    if value not in TASKS:
        raise UserError(f"unknown RULER task {value!r}; tasks: {', '.join(TASKS)}")


def table_number(value: int) -> None:
    from .tables import LAYOUTS

    if value not in LAYOUTS:
        raise UserError(f"there is no table {value}; tables: {', '.join(map(str, LAYOUTS))}")
