"""The `gdn2-eval` command line. One function per command; bad input ends in one line and exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(
    help="Evaluate Gated DeltaNet-2 and linear-attention checkpoints: convert, inspect, run, tabulate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()


def user_errors(fn):
    """Turn `UserError` (and a missing file) into `error: ...` on stderr and exit code 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' training checkpoint (*-model-ckpt.pth).")],
    arch: Annotated[str, typer.Option(help="Preset name (e.g. gdn2_1.3B) or a JSON file of the authors' config.")],
    out: Annotated[Path, typer.Option(help="Hugging Face directory to write.")],
    tokenizer: Annotated[
        Path | None, typer.Option(help="Tokenizer directory to copy in (the checkpoint holds none).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="Weights dtype: bf16, fp16 or fp32.")] = "bf16",
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert an authors' checkpoint into a Hugging Face directory that AutoModelForCausalLM loads
    (after `import gdn2_eval`)."""
    from .loading import convert_checkpoint

    path = convert_checkpoint(checkpoint, arch, out, tokenizer=tokenizer, dtype=dtype, force=force)
    console.print(f"wrote {path}")


@app.command()
@user_errors
def info(
    model: Annotated[
        str, typer.Argument(help="Preset name, Hugging Face directory, or checkpoint file (with --arch).")
    ],
    arch: Annotated[str | None, typer.Option(help="Preset or JSON config, for a checkpoint file.")] = None,
    device: Annotated[str, typer.Option(help="Device the kernel choice is made for: auto, cpu, cuda.")] = "auto",
) -> None:
    """Print a GDN-2 model's layout, parameter counts, recurrent state size and the kernel path it would use."""
    from .info import config_for, summarise
    from .loading import resolve_device

    name, config = config_for(model, arch)
    s = summarise(name, config, resolve_device(device))
    table = Table(title=f"{s.name} ({s.family})", show_header=False)
    table.add_row("layout", f"{len(s.layers)} blocks: {s.layout}  (G = GDN-2, S = sliding-window attention)")
    table.add_row("parameters", f"{s.total_params:,} total, {s.non_embedding_params:,} non-embedding")
    table.add_row(
        "GDN-2 heads",
        f"{config.gdn2_num_heads} key x {config.gdn2_head_dim}, "
        f"{config.gdn2_num_v_heads} value x {config.gdn2_value_dim}",
    )
    kinds = {layer.kind: layer for layer in s.layers}
    if "gdn2" in kinds:
        g = kinds["gdn2"]
        table.add_row(
            "state / GDN-2 layer",
            f"{g.recurrent_floats:,} fp32 ({g.recurrent_floats * 4 / 2**20:.2f} MiB) + conv {g.conv_values:,} values",
        )
    if "swa" in kinds:
        w = kinds["swa"]
        table.add_row(
            "window / SWA layer",
            f"{w.window_values:,} values (keys+values of {config.local_window - 1} "
            f"tokens, {w.window_values * 2 / 2**20:.2f} MiB in bf16)",
        )
    table.add_row(
        "state / sequence",
        f"{s.state_bytes_per_sequence(2) / 2**20:.2f} MiB (bf16 model), independent of context length",
    )
    table.add_row("kernel", f"{s.kernel} (config kernel={config.kernel!r}; override with $GDN2_KERNEL)")
    table.add_row("output gate / ablation", f"{config.output_gate_act} / {config.gate_ablation}")
    console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
