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


@app.command()
@user_errors
def run(
    model: Annotated[str, typer.Option(help="HF directory, authors' checkpoint (.pth, with --arch) or fla model dir.")],
    suite: Annotated[str | None, typer.Option(help="Task suite: lm, commonsense, table2.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated lm-eval task names (instead of --suite).")] = None,
    arch: Annotated[str | None, typer.Option(help="Preset or JSON config, for a checkpoint file.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer directory (required for a checkpoint file).")] = None,
    tasks_dir: Annotated[Path | None, typer.Option(help="Extra folder of lm-eval task YAMLs (your own tasks).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N documents of each task.")] = None,
    batch_size: Annotated[str, typer.Option(help="Requests per batch, or 'auto'.")] = "16",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32.")] = "auto",
    data_dir: Annotated[
        Path | None, typer.Option(help="Read datasets from this local copy (made by `gdn2-eval data fetch`).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory [default: results/runs/NAME/SUITE].")] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip finished tasks and reuse cached requests of this directory.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace another model's results in --out.")] = False,
    name: Annotated[
        str | None, typer.Option(help="Label of the model in tables [default: file or folder name].")
    ] = None,
    ppl_protocol: Annotated[
        str, typer.Option(help="Perplexity protocol: rolling (lm-eval's disjoint windows) or carry (whole document).")
    ] = "rolling",
    ppl_window: Annotated[
        int | None, typer.Option(help="Window of the rolling protocol [default: the model's training length].")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(help="Tokens per forward call; longer inputs carry state.")] = 16384,
    gate_ablation: Annotated[
        str | None, typer.Option(help="GDN-2 Table 5 ablation: scalar_erase or scalar_write.")
    ] = None,
    kernel: Annotated[str | None, typer.Option(help="GDN-2 kernel: auto, triton, fla, torch.")] = None,
) -> None:
    """Evaluate a model on a suite or on tasks; results go to a run directory that `--resume` continues."""
    import time

    from .runner import RunSpec
    from .runner import run as run_spec
    from .suites import suite_tasks

    if (suite is None) == (tasks is None):
        raise UserError("pass exactly one of --suite or --tasks")
    task_list = suite_tasks(suite) if suite else [t.strip() for t in tasks.split(",") if t.strip()]
    options = {
        "ppl_protocol": ppl_protocol,
        "ppl_window": ppl_window,
        "chunk_tokens": chunk_tokens,
        "gate_ablation": gate_ablation,
        "kernel": kernel,
    }
    spec = RunSpec(
        model=model,
        tasks=task_list,
        suite=suite or "custom",
        arch=arch,
        tokenizer=tokenizer,
        tasks_dir=tasks_dir,
        limit=limit,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        data_dir=data_dir,
        out=out,
        resume=resume,
        force=force,
        name=name,
        model_options={k: v for k, v in options.items() if v is not None},
    )
    started, t0 = {}, time.time()

    def progress(task: str, state: str) -> None:
        i = task_list.index(task) + 1
        if state == "start":
            started[task] = time.time()
            console.print(f"[bold]\\[{i}/{len(task_list)}][/bold] {task} ...")
            return
        took = time.time() - started[task]
        left = (time.time() - t0) / i * (len(task_list) - i)
        console.print(f"      {task}: {state} in {took:.1f}s; about {left:.0f}s left")

    out_dir = run_spec(spec, progress=progress)
    _print_summary(out_dir / "summary.csv")
    console.print(f"results in {out_dir}")


def _print_summary(path: Path) -> None:
    import csv

    table = Table(title="summary")
    for col in ("task", "metric", "context", "value", "n"):
        table.add_column(col, justify="right" if col in ("value", "n", "context") else "left")
    with path.open() as f:
        for row in csv.DictReader(f):
            table.add_row(
                row["task"], row["metric"], row["context_length"], f"{float(row['value']):.4g}", row["n_samples"]
            )
    console.print(table)


data_app = typer.Typer(help="Local copies of the datasets, for machines without internet.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
@user_errors
def data_fetch(
    to: Annotated[Path, typer.Option(help="Folder to write the local copy into (pass it later as --data-dir).")],
    suite: Annotated[str | None, typer.Option(help="Suite whose datasets to fetch.")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated task names.")] = None,
    tasks_dir: Annotated[Path | None, typer.Option(help="Extra folder of task YAMLs.")] = None,
) -> None:
    """Download the datasets a suite's tasks read and save them as JSON lines (run where there is internet)."""
    from .data import save_local_copy
    from .runner import check_tasks, task_manager
    from .suites import suite_tasks

    if (suite is None) == (tasks is None):
        raise UserError("pass exactly one of --suite or --tasks")
    names = suite_tasks(suite) if suite else [t.strip() for t in tasks.split(",") if t.strip()]
    manager = task_manager(tasks_dir)
    check_tasks(names, manager)
    from lm_eval.api.task import Task
    from lm_eval.tasks import get_task_dict

    def leaves(obj):
        if isinstance(obj, Task):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from leaves(v)

    for task in leaves(get_task_dict(names, manager)):
        cfg = task.config
        files = save_local_copy(cfg.dataset_path, cfg.dataset_name, task.dataset, to)
        console.print(f"{cfg.task}: {', '.join(files)}")
    console.print(f"local copy in {to}; use it with --data-dir {to}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
