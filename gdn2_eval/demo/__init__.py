"""Built-in demo checkpoints: small GDN-2, KDA and Gated DeltaNet models trained on synthetic retrieval
(`gdn2_eval.demo.train`), shipped in the package so that `gdn2-eval run --model demo` works anywhere.

They are demos of the harness, trained on RULER-format data: not evidence about the architectures at scale.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

# demo name -> the mixer's gates (`GDN2Config.gates`)
DEMOS = {"demo": "gdn2", "demo-kda": "kda", "demo-gdn": "gdn"}
WEIGHTS_DIR = Path(__file__).parent / "weights"


def demo_dir(name: str) -> Path:
    """The shipped directory of demo `name` (an HF model directory with its tokenizer and model card)."""
    if name not in DEMOS:
        raise UserError(f"unknown demo model {name!r}; demos: {', '.join(DEMOS)}")
    path = WEIGHTS_DIR / name
    if not (path / "config.json").is_file():
        raise UserError(f"demo model {name!r} is not shipped in this installation ({path} is missing); train it with "
                        f"`gdn2-eval train-demo --gates {DEMOS[name]} --out DIR`")
    return path


def resolve_model(model: str | Path) -> str:
    """A model argument as given, or the shipped directory when it names a demo and no such path exists."""
    if str(model) in DEMOS and not Path(model).exists():
        return str(demo_dir(str(model)))
    return str(model)
