"""The `gdn2-eval` command line. One function per command; bad input ends in one line and exit code 2."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

try:  # typer vendors click from 0.2x on; its command classes raise that copy's exceptions
    from typer import _click as click
except ImportError:  # pragma: no cover - older typer on click itself
    import click

from . import checks
from .demo.recipe import DemoRecipe
from .errors import UserError


class _OneLineUsageError(click.exceptions.ClickException):
    """A usage error (bad type, missing option, unknown option) printed as one line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        print(f"error: {self.message}", file=sys.stderr)


class _Commands(TyperGroup):
    """The command group: usage errors of every command become one line (`error: ...`), like every other error."""

    @staticmethod
    def _one_line(e: click.exceptions.UsageError) -> click.exceptions.ClickException:
        if isinstance(e, click.exceptions.NoArgsIsHelpError):
            return e
        where = f"{e.ctx.command_path}: " if e.ctx is not None and e.ctx.command_path else ""
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        return _OneLineUsageError(f"{where}{e.format_message()}{hint}")

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.UsageError as e:
            raise self._one_line(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.UsageError as e:
            raise self._one_line(e) from None


app = typer.Typer(
    cls=_Commands,
    help="Evaluate Gated DeltaNet-2 and linear-attention checkpoints: convert, inspect, run, tabulate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
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
    from .names import check_name

    checks.existing_file("CHECKPOINT", checkpoint)
    check_name(tokenizer, "tokenizer")
    checks.arch(arch)
    checks.choice("--dtype", dtype, checks.CONVERT_DTYPES)
    checks.writable_dir("--out", out)
    if out.exists() and not force:
        raise UserError(f"output directory {out} exists; pass --force to replace it")
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
    if "/" in model and not Path(model).exists():  # a hub name (presets have no slash): resolved before any import
        from .names import check_name

        check_name(model, "model")
    checks.arch(arch)
    checks.device(device)
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
    if s.step_kernel != s.kernel:
        table.add_row("decode step", f"{s.step_kernel} (the inference path's fused one-token step)")
    table.add_row("gates", config.gates)
    table.add_row("output gate / ablation", f"{config.output_gate_act} / {config.gate_ablation}")
    console.print(table)


@app.command()
@user_errors
def run(
    model: Annotated[
        str,
        typer.Option(help="HF directory, authors' checkpoint (.pth, with --arch), fla model dir, or a built-in demo: "
                     "demo, demo-kda, demo-gdn."),
    ],
    suite: Annotated[
        str | None, typer.Option(help="Task suite: lm, commonsense, table2, ruler (Table 3 grid), ruler-full.")
    ] = None,
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
    chunk_tokens: Annotated[
        int, typer.Option(help="Tokens per forward call when scoring; longer inputs carry state.")
    ] = 16384,
    prefill_tokens: Annotated[
        int, typer.Option(help="Tokens per forward call for prompts before generation (no logits kept).")
    ] = 65536,
    gate_ablation: Annotated[
        str | None, typer.Option(help="GDN-2 Table 5 ablation: scalar_erase or scalar_write.")
    ] = None,
    kernel: Annotated[str | None, typer.Option(help="GDN-2 kernel: auto, triton, fla, torch.")] = None,
    impl: Annotated[
        str,
        typer.Option(help="How a GDN-2 model runs: inference (packed weights, fused kernels), reference (the "
                     "readable model), auto (inference on CUDA, reference elsewhere)."),
    ] = "auto",
    lengths: Annotated[
        str | None, typer.Option(help="RULER context lengths, e.g. 1k,2k,4k [default: the suite's grid, else 4k].")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="RULER samples per task and length [default: 500].")] = None,
    seed: Annotated[int | None, typer.Option(help="RULER generation seed [default: ruler.DEFAULT_SEED].")] = None,
    haystack: Annotated[
        Path | None, typer.Option(help="Essay haystack for RULER: RULER's essay JSON or a plain-text file.")
    ] = None,
    ruler_jsonl: Annotated[
        Path | None, typer.Option(help="Evaluate a RULER .jsonl made by NVIDIA's RULER scripts (no --suite/--tasks).")
    ] = None,
    num_gpus: Annotated[
        int, typer.Option(help="Data-parallel over this many GPUs of this machine (starts `accelerate launch`).")
    ] = 1,
    share_prefix: Annotated[
        str, typer.Option(help="Prefill each prefix that prompts share once, from a state snapshot: on, off, or "
                          "auto (where a call saves a few thousand tokens or more, and on a GPU where its "
                          "prompts average 6K tokens or more).")
    ] = "auto",
    share_budget: Annotated[
        str | None, typer.Option(help="Memory for prefix snapshots, e.g. 8GiB [default: half the free GPU memory, "
                                 "a quarter of RAM on the CPU]; when full, prompts restart further up.")
    ] = None,
) -> None:
    """Evaluate a model on a suite or on tasks; results go to a run directory that `--resume` continues.

    Examples: `--suite table2`; `--suite ruler` (S-NIAH-1/2 at 1K-8K, S-NIAH-3 and MK-NIAH-1 at 1K-4K);
    `--tasks niah_single_2 --lengths 16k,32k --samples 100`."""
    import time

    from .names import offline, resolve_name

    # every option is checked before anything is loaded or written
    if ruler_jsonl is not None:
        if suite or tasks:
            raise UserError("--ruler-jsonl replaces --suite/--tasks; pass only one of them")
        checks.existing_file("--ruler-jsonl", ruler_jsonl)
        suite, task_list = "ruler-jsonl", ["ruler_jsonl"]
    else:
        task_list = _task_names(suite, tasks)
    with offline(data_dir is not None):  # a run on a local data copy makes no network request
        resolved = resolve_name(model, "model")
        if name is None and resolved != model and not Path(model).exists():
            name = Path(model).stem  # a demo or a cached hub model: labelled by the name given, not its snapshot
        if tokenizer is not None:
            tokenizer = resolve_name(tokenizer, "tokenizer")
        checks.arch(arch)
        checks.existing_dir("--tasks-dir", tasks_dir)
        checks.at_least("--limit", limit, 1)
        batch_size = checks.batch_size(batch_size)
        device = checks.device(device)
        checks.choice("--dtype", dtype, checks.RUN_DTYPES)
        checks.existing_dir("--data-dir", data_dir)
        checks.writable_dir("--out", out)
        checks.not_empty("--name", name)
        checks.choice("--ppl-protocol", ppl_protocol, checks.PPL_PROTOCOLS)
        checks.at_least("--ppl-window", ppl_window, 1)
        checks.at_least("--chunk-tokens", chunk_tokens, 1)
        checks.at_least("--prefill-tokens", prefill_tokens, 1)
        checks.gate_ablation(gate_ablation)
        checks.kernel(kernel, device)
        impl = checks.choice("--impl", (impl or "auto").lower(), checks.IMPLS)
        parsed_lengths = checks.lengths("--lengths", lengths)
        checks.at_least("--samples", samples, 1)
        checks.at_least("--seed", seed, 0)
        checks.existing_file("--haystack", haystack)
        checks.at_least("--num-gpus", num_gpus, 1)
        share_prefix = checks.choice("--share-prefix", share_prefix.lower(), checks.SHARE_MODES, "sharing mode")
        checks.size("--share-budget", share_budget)
        if arch is not None and Path(model).is_dir():
            raise UserError(f"--arch is for a checkpoint file; {model} is a directory (its config.json is used)")
        from .distributed import is_main_process, launched_world_size

        if num_gpus > 1 and launched_world_size() == 1:
            raise typer.Exit(_launch_data_parallel(num_gpus))
        _run(resolved, suite, task_list, arch, tokenizer, tasks_dir, limit, batch_size, device, dtype, data_dir, out,
             resume, force, name, ppl_protocol, ppl_window, chunk_tokens, prefill_tokens, gate_ablation, kernel, impl,
             parsed_lengths, samples, seed, haystack, ruler_jsonl, share_prefix, share_budget, is_main_process(),
             time.time())


def _run(model, suite, task_list, arch, tokenizer, tasks_dir, limit, batch_size, device, dtype, data_dir, out, resume,
         force, name, ppl_protocol, ppl_window, chunk_tokens, prefill_tokens, gate_ablation, kernel, impl, lengths,
         samples, seed, haystack, ruler_jsonl, share_prefix, share_budget, main_rank, t0) -> None:
    import time

    from .runner import RunSpec
    from .runner import run as run_spec

    options = {
        "ppl_protocol": ppl_protocol,
        "ppl_window": ppl_window,
        "chunk_tokens": chunk_tokens,
        "prefill_tokens": prefill_tokens,
        "gate_ablation": gate_ablation,
        "kernel": kernel,
        "impl": impl,
        "share_prefix": share_prefix,
        "share_budget": share_budget,
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
        lengths=lengths,
        samples=samples,
        seed=seed,
        haystack=haystack,
        ruler_jsonl=ruler_jsonl,
    )
    started = {}

    def progress(unit: str, state: str, n: int, total: int) -> None:
        if not main_rank:
            return
        if state == "start":
            started[unit] = time.time()
            console.print(f"[bold]\\[{n + 1}/{total}][/bold] {unit} ...")
            return
        took = time.time() - started[unit]
        left = (time.time() - t0) / (n + 1) * (total - n - 1)
        console.print(f"      {unit}: {state} in {took:.1f}s; about {left:.0f}s left")

    out_dir = run_spec(spec, progress=progress)
    if main_rank:
        _print_summary(out_dir / "summary.csv")
        _print_token_saving(out_dir / "results.json")
        console.print(f"results in {out_dir}")


def _launch_data_parallel(num_gpus: int) -> int:
    """Re-run this `gdn2-eval run` command under `accelerate launch` with one process per GPU; returns its exit
    code. NVLink multicast stays off (NCCL_NVLS_ENABLE=0): on shared hosts it can take every GPU out of service."""
    import subprocess

    import torch

    if torch.cuda.device_count() < num_gpus:
        raise UserError(f"--num-gpus {num_gpus}: this machine has {torch.cuda.device_count()} CUDA device(s); on "
                        "CPUs or across machines start the processes with `accelerate launch` or `torchrun`")
    args, skip = [], False
    for arg in sys.argv[1:]:  # the same command without --num-gpus
        if skip:
            skip = False
        elif arg == "--num-gpus":
            skip = True
        elif not arg.startswith("--num-gpus="):
            args.append(arg)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_gpus),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "gdn2_eval", *args]
    return subprocess.call(cmd, env={**os.environ, "NCCL_NVLS_ENABLE": "0"})


def _task_names(suite: str | None, tasks: str | None) -> list[str]:
    """The tasks of `--suite NAME` or of `--tasks T1,T2` (exactly one of them)."""
    from .suites import suite_tasks

    if (suite is None) == (tasks is None):
        raise UserError("pass exactly one of --suite or --tasks")
    names = suite_tasks(suite) if suite else [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError(f"--tasks {tasks!r} names no task")
    return names


def _print_token_saving(path: Path) -> None:
    """How many prompt tokens the model actually ran (prefix sharing runs each shared prefix once)."""
    tokens = json.loads(path.read_text()).get("tokens", {})
    prompt = sum(t["prompt_tokens"] for t in tokens.values())
    run = sum(t["prefill_tokens"] for t in tokens.values())
    if prompt:
        console.print(f"prefill: {run:,} of {prompt:,} prompt tokens run through the model "
                      f"({100 * (1 - run / prompt):.0f}% saved by sharing prefixes)")


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
    names = _task_names(suite, tasks)
    checks.writable_dir("--to", to)
    checks.existing_dir("--tasks-dir", tasks_dir)
    from .data import save_local_copy
    from .runner import check_tasks, task_manager

    manager = task_manager(tasks_dir, tasks=names)
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


RunDirs = Annotated[
    list[Path] | None,
    typer.Argument(help="Run directories of `gdn2-eval run` (or folders holding them), placed among the baselines."),
]
Baselines = Annotated[str, typer.Option(help="paper: include the paper's reported numbers; none: only your runs.")]


@app.command()
@user_errors
def table(
    run_dirs: RunDirs = None,
    table: Annotated[int, typer.Option("--table", "-t", help="The paper's table: 2, 3, 4 or 5.")] = 2,
    baselines: Baselines = "paper",
    format: Annotated[str, typer.Option("--format", "-f", help="md, latex or csv.")] = "md",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of printing.")] = None,
) -> None:
    """Print one of the paper's Tables 2-5 with your runs in their family's block: best per family and column in
    bold, second best underlined, missing cells as a dash with a footnote."""
    checks.table_number(table)  # an unknown table number fails before anything is read
    checks.choice("--baselines", baselines, checks.BASELINES)
    checks.choice("--format", format, ("md", "latex", "csv"))
    checks.existing_paths("RUN_DIRS", run_dirs, "run directory")
    checks.writable_file("--out", out)
    from .results import load
    from .tables import build, render

    df = load(*(run_dirs or []), baselines=baselines)
    if df.empty:
        raise UserError("nothing to tabulate: give run directories, or leave --baselines at paper")
    text = render(build(df, table), format)
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}")


@app.command()
@user_errors
def plot(
    run_dirs: RunDirs = None,
    kind: Annotated[
        str, typer.Option(help="niah-length, niah-depth (from per-sample logs), commonsense or throughput.")
    ] = "niah-length",
    baselines: Baselines = "paper",
    family: Annotated[
        list[str] | None, typer.Option(help="Family block(s) to draw: recurrent, hybrid (default: those of the runs).")
    ] = None,
    bench: Annotated[
        list[Path] | None, typer.Option(help="Benchmark JSON files or folders for throughput (default: results/bench).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Image path; PNG and PDF are written (default: results/figures/KIND).")
    ] = None,
) -> None:
    """Draw a figure as PNG and PDF: RULER accuracy against context length, accuracy by needle depth and length,
    common-sense accuracies, or throughput and memory against context length."""
    checks.choice("--kind", kind, ("niah-length", "niah-depth", "commonsense", "throughput"), "plot kind")
    checks.choice("--baselines", baselines, checks.BASELINES)
    for f in family or ():
        checks.choice("--family", f, checks.FAMILIES)
    checks.existing_paths("RUN_DIRS", run_dirs, "run directory")
    checks.existing_paths("--bench", bench)
    checks.writable_file("--out", out)
    if kind == "niah-depth" and not run_dirs:
        raise UserError("niah-depth draws per-sample logs of runs: give run directories")
    paths = _draw(kind, run_dirs or [], baselines, family, bench, out or Path("results/figures") / kind)
    console.print("wrote " + ", ".join(map(str, paths)))


def _draw(kind, run_dirs, baselines, family, bench, out, df=None, samples=None):
    """One figure; `df` (results with baselines) and `samples` (per-sample RULER logs) when already loaded."""
    from . import plots
    from .results import load, niah_samples, read_paper

    if kind not in plots.KINDS:
        raise UserError(f"unknown plot kind {kind!r}; kinds: {', '.join(plots.KINDS)}")
    if kind == "niah-depth":
        if not run_dirs:
            raise UserError("niah-depth draws per-sample logs of runs: give run directories")
        fig = plots.niah_depth(niah_samples(*run_dirs) if samples is None else samples)
    elif kind == "throughput":
        fig = plots.throughput(plots.bench_records(bench), read_paper().get("figure2") if baselines == "paper" else [])
    else:
        df = load(*run_dirs, baselines=baselines) if df is None else df
        fig = plots.niah_length(df, family) if kind == "niah-length" else plots.commonsense(df, family)
    return plots.save(fig, out)


@app.command()
@user_errors
def paper(
    run_dirs: RunDirs = None,
    out: Annotated[Path, typer.Option(help="Folder for tableN.md/.tex/.csv and the figures.")] = Path(
        "results/generated"
    ),
    bench: Annotated[
        list[Path] | None, typer.Option(help="Benchmark JSON files or folders (default: results/bench).")
    ] = None,
) -> None:
    """Regenerate the paper's Tables 2-5 (Markdown, LaTeX, CSV) and the figures the results support, from the
    reported numbers plus any runs given. With no runs the tables are the paper's, value for value."""
    checks.existing_paths("RUN_DIRS", run_dirs, "run directory")
    checks.existing_paths("--bench", bench)
    checks.writable_dir("--out", out)
    from .results import load, niah_samples
    from .tables import write_all

    df = load(*(run_dirs or []), baselines="paper")
    for path in write_all(df, out):
        console.print(f"wrote {path}")
    kinds = ["niah-length", "commonsense", "throughput"]
    samples = niah_samples(*run_dirs) if run_dirs else None
    if samples is not None and not samples.empty:
        kinds.insert(1, "niah-depth")
    for kind in kinds:
        try:
            paths = _draw(kind, run_dirs or [], "paper", None, bench, out / kind, df=df, samples=samples)
        except UserError as e:  # a figure the stored results do not support
            console.print(f"skipped {kind}: {e}")
            continue
        console.print("wrote " + ", ".join(map(str, paths)))
    if not (run_dirs and "niah-depth" in kinds):
        console.print("skipped niah-depth: needs runs with per-sample RULER logs")


@app.command("train-demo")
@user_errors
def train_demo(
    out: Annotated[Path, typer.Option(help="Directory of the trained model (HF files, tokenizer, model card).")],
    gates: Annotated[
        str, typer.Option(help="gdn2 (decoupled erase/write gates), kda or gdn (tied gates); all: the three at once, "
                          "into OUT/demo, OUT/demo-kda, OUT/demo-gdn.")
    ] = "gdn2",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = DemoRecipe.steps,
    batch_tokens: Annotated[
        int, typer.Option(help="Tokens per step: each step holds batch_tokens // L samples of one length L.")
    ] = DemoRecipe.batch_tokens,
    lengths: Annotated[str, typer.Option(help="Training sample lengths in tokens, e.g. 512,1k,2k.")] = ",".join(
        map(str, DemoRecipe.lengths)),
    curriculum_steps: Annotated[
        int, typer.Option(help="The first steps use --curriculum-lengths.")
    ] = DemoRecipe.curriculum_steps,
    curriculum_lengths: Annotated[
        str, typer.Option(help="Lengths of the first steps (short key-value lists), e.g. 160,192,256.")
    ] = ",".join(map(str, DemoRecipe.curriculum_lengths)),
    workers: Annotated[
        int, typer.Option(help="Data-generating processes (on CUDA; the CPU path makes data inline).")
    ] = DemoRecipe.workers,
    max_minutes: Annotated[
        float, typer.Option(help="Stop training after this long, then evaluate and save; the checkpoint stays for "
                          "--resume.")
    ] = DemoRecipe.max_minutes,
    seed: Annotated[int, typer.Option(help="Initialisation and data-order seed.")] = DemoRecipe.seed,
    eval_samples: Annotated[
        int, typer.Option(help="Fresh S-NIAH-1 samples at 1K and 2K for the final evaluation (0: none).")
    ] = DemoRecipe.eval_samples,
    evaluate: Annotated[
        bool, typer.Option(help="Train nothing: evaluate the trained model in --out and rewrite its card.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cuda or cpu.")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training in --out.")] = False,
) -> None:
    """Train a small demo model on synthetic retrieval (RULER-format NIAH and key-value lists, up to 2K tokens).

    The shipped demos (`--model demo`, `demo-kda`, `demo-gdn`) were made with the defaults on one H100; see
    `gdn2_eval/demo/recipe.py` for the recipe and each demo's README.md for its figures."""
    from .demo import DEMOS

    checks.writable_dir("--out", out)
    checks.choice("--gates", gates, (*DEMOS.values(), "all"))
    checks.at_least("--steps", steps, 1)
    checks.at_least("--batch-tokens", batch_tokens, 1)
    checks.lengths("--lengths", lengths)
    checks.at_least("--curriculum-steps", curriculum_steps, 0)
    checks.lengths("--curriculum-lengths", curriculum_lengths)
    checks.at_least("--workers", workers, 0)
    checks.positive("--max-minutes", max_minutes)
    checks.at_least("--seed", seed, 0)
    checks.at_least("--eval-samples", eval_samples, 0)
    checks.device(device)
    from .demo.train import evaluate_demo, train_all
    from .demo.train import train_demo as train
    from .ruler import parse_lengths

    if evaluate:
        record = evaluate_demo(out, eval_samples, device=device)
        typer.echo(f"S-NIAH-1 ({eval_samples} samples per cell): {record['eval_string_match_all']} -> {out}")
        return
    recipe = DemoRecipe(gates=gates, steps=steps, batch_tokens=batch_tokens, lengths=tuple(parse_lengths(lengths)),
                        curriculum_steps=curriculum_steps, curriculum_lengths=tuple(parse_lengths(curriculum_lengths)),
                        workers=workers, max_minutes=max_minutes, seed=seed, eval_samples=eval_samples)
    if gates == "all":
        args = recipe.cli_args() + ["--device", device] + (["--resume"] if resume else [])
        for record in train_all(out, args):
            typer.echo(f"{record['recipe']['gates']}: {record['steps_done']} steps, final loss "
                       f"{record['final_loss']}, S-NIAH-1 {record['eval_string_match_all']}")
        return
    if gates not in DEMOS.values():
        raise UserError(f"unknown --gates {gates!r}; choose {', '.join(DEMOS.values())} or all")
    record = train(recipe, out, device=device, resume=resume)
    typer.echo(f"trained {record['steps_done']} steps in {record['train_minutes']} min, final loss "
               f"{record['final_loss']}; S-NIAH-1: {record['eval_string_match_all']} -> {out}")


bench_app = typer.Typer(help="Speed measurements on a CUDA device.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("kernels")
@user_errors
def bench_kernels(
    out: Annotated[Path, typer.Option(help="JSON file to write (a Markdown table goes beside it).")] = Path(
        "results/bench/kernels.json"
    ),
    shapes: Annotated[str | None, typer.Option(help="Comma-separated BxT, e.g. 1x4096,8x4096 (default: all).")] = None,
    repeats: Annotated[int, typer.Option(help="Timed runs per measurement (median reported).")] = 20,
    accuracy: Annotated[bool, typer.Option(help="Also check accuracy against float64 and fla.")] = True,
) -> None:
    """Our GDN-2 prefill and decode kernels against fla's on the same inputs (H=16, d=128, bf16)."""
    checks.writable_file("--out", out)
    parsed = checks.shapes(shapes)
    checks.at_least("--repeats", repeats, 1)
    _need_cuda("kernels")
    from .bench.kernels import DEFAULT_SHAPES, markdown, run_kernel_bench

    todo = parsed or DEFAULT_SHAPES
    rows = run_kernel_bench(todo, out, repeats=repeats, accuracy=accuracy)
    console.print(markdown(rows))
    console.print(f"wrote {out}")


def _bench_argv(**options) -> list[str]:
    """Typer options as the bench module's argparse arguments (None: left at the module's default)."""
    argv = []
    for name, value in options.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def _need_cuda(what: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"bench {what} needs a CUDA device")


@bench_app.command("model")
@user_errors
def bench_model(
    out: Annotated[Path | None, typer.Option(help="JSON to write [default: results/bench/model_<gpu>.json].")] = None,
    preset: Annotated[str, typer.Option(help="GDN-2 preset, random bf16 weights.")] = "gdn2_1.3B",
    kernel: Annotated[str, typer.Option(help="GDN-2 recurrence kernels: auto, fla, triton.")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median reported).")] = 3,
    parts: Annotated[str, typer.Option(help="Parts to run: ceilings,cold_start,prefill,decode,agreement,profile.")] = (
        "ceilings,cold_start,prefill,decode,agreement,profile"),
    shapes: Annotated[str | None, typer.Option(help="Prefill shapes, comma-separated BxT [default: the five of "
                                               "the benchmark].")] = None,
    batches: Annotated[str | None, typer.Option(help="Decode batch sizes, e.g. 1,16,64.")] = None,
    compare_kernels: Annotated[str | None, typer.Option(help="Further recurrence kernels to time the inference "
                                                        "path with, e.g. triton.")] = None,
    merge: Annotated[bool, typer.Option(help="Update the JSON's rows of the shapes measured, keep the rest.")] = False,
    cold_kernels: Annotated[str | None, typer.Option(help="Recurrence kernels to time the cold start with, each "
                                                     "from an empty compile cache, e.g. auto,triton.")] = None,
    dump_fla_configs: Annotated[Path | None, typer.Option(help="At the end, write the launch configurations fla's "
                                                          "autotuner chose to this folder (what "
                                                          "kernels/configs/fla/<GPU>/ keeps).")] = None,
) -> None:
    """The model end to end: prefill against fla's Gated DeltaNet 1.3B, the decode step against its memory floor,
    the cold start, and the inference path's logits against the reference's."""
    checks.writable_file("--out", out)
    checks.preset("--preset", preset)
    checks.choice("--kernel", kernel, checks.BENCH_KERNELS)
    checks.at_least("--repeats", repeats, 1)
    checks.comma_subset("--parts", parts, checks.BENCH_PARTS)
    checks.shapes(shapes)
    checks.batches("--batches", batches)
    if compare_kernels is not None:
        checks.comma_subset("--compare-kernels", compare_kernels, ("fla", "triton"))
    if cold_kernels is not None:
        checks.comma_subset("--cold-kernels", cold_kernels, checks.BENCH_KERNELS)
    checks.writable_dir("--dump-fla-configs", dump_fla_configs)
    _need_cuda("model")
    from .bench.model import main as bench_main

    bench_main(_bench_argv(out=out, preset=preset, kernel=kernel, repeats=repeats, parts=parts, shapes=shapes,
                           batches=batches, compare_kernels=compare_kernels, cold_kernels=cold_kernels,
                           dump_fla_configs=dump_fla_configs) + (["--merge"] if merge else []))


@bench_app.command("gemv")
@user_errors
def bench_gemv(
    out: Annotated[Path | None, typer.Option(help="JSON to write [default: results/bench/gemv_<gpu>.json].")] = None,
    preset: Annotated[str, typer.Option(help="GDN-2 preset whose decode-step weight shapes are measured.")] = (
        "gdn2_1.3B"),
    rows: Annotated[str, typer.Option(help="Row counts (decode batch buckets), e.g. 1,16,64.")] = "1,16,64",
    pin: Annotated[bool, typer.Option(help="Write the configurations that beat cuBLAS to kernels/configs/skinny/"
                                      "<GPU>.json, which the decode step then takes on this GPU.")] = False,
) -> None:
    """The decode step's GEMMs at a few rows: cuBLAS against the project's few-row Triton GEMM."""
    from .kernels.linear.skinny import ROW_BUCKETS

    checks.writable_file("--out", out)
    checks.preset("--preset", preset)
    parsed = checks.batches("--rows", rows)
    if any(r not in ROW_BUCKETS for r in parsed):
        raise UserError(f"--rows: each one of {', '.join(map(str, ROW_BUCKETS))} (the row buckets the decode step "
                        f"looks up), got {rows!r}")
    _need_cuda("gemv")
    from .bench.gemv import main as gemv_main
    from .bench.model import gpu_slug

    dest = out or Path(f"results/bench/gemv_{gpu_slug()}.json")
    report = gemv_main(dest, preset, tuple(parsed), pin)
    faster = sum(r["faster"] for r in report["rows"])
    console.print(f"the Triton GEMM beat cuBLAS on {faster} of {len(report['rows'])} shapes; wrote {dest}"
                  + (f" and {report['pinned']}" if pin else ""))


@bench_app.command("ruler")
@user_errors
def bench_ruler(
    out: Annotated[Path, typer.Option(help="JSON to write.")] = Path("results/bench/ruler.json"),
    samples: Annotated[int | None, typer.Option(help="Samples per cell (0: only the long sample).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Only these lengths of the grid, e.g. 1k,2k.")] = None,
    model: Annotated[str | None, typer.Option(help="A trained model (directory or demo name) instead of "
                                               "random weights.")] = None,
    preset: Annotated[str, typer.Option(help="Random bf16 weights of this GDN-2 preset, or of one of fla's "
                                        "baselines of ~1.3B: kda, gated_deltanet, mamba2.")] = "gdn2_1.3B",
    impl: Annotated[str, typer.Option(help="How the gdn2 backend runs GDN-2: auto, inference, reference.")] = "auto",
    long_length: Annotated[int | None, typer.Option(help="One sample at this length first (0: skip).")] = None,
    share_compare: Annotated[bool, typer.Option(help="Also run each cell through the gdn2 backend with prefix "
                                                "sharing off (time and tokens with and without).")] = True,
    dump_fla_configs: Annotated[Path | None, typer.Option(help="After each step, write the launch configurations "
                                                          "fla's autotuner chose to this folder (what "
                                                          "kernels/configs/fla/<GPU>/ keeps).")] = None,
    profile_cells: Annotated[str | None, typer.Option(help="Cells to profile with and without prefix sharing "
                                                      "(torch.profiler tables beside --out), e.g. "
                                                      "niah_single_1@1k,niah_multikey_1@2k.")] = None,
    resume: Annotated[bool, typer.Option(help="Keep the cells already in --out (an earlier run of the same model, "
                                         "GPU and sizes, cut short) and run only the others.")] = False,
    warm_every_cell: Annotated[bool, typer.Option(help="Run every cell once untimed per backend before timing it, "
                                                  "not only the first of each length: for models whose kernels "
                                                  "autotune on new shapes (fla's without pinned configurations).")]
    = False,
) -> None:
    """The RULER grid through the gdn2 backend and lm-eval's stock hf backend on the same prompts."""
    from .names import check_name

    checks.writable_file("--out", out)
    checks.at_least("--samples", samples, 0)
    checks.lengths("--lengths", lengths)
    check_name(model, "model")
    checks.preset("--preset", preset, baselines=True)
    checks.choice("--impl", impl, checks.IMPLS)
    checks.at_least("--long-length", long_length, 0)
    checks.writable_dir("--dump-fla-configs", dump_fla_configs)
    cells = checks.ruler_cells("--profile-cells", profile_cells, lengths)
    if cells and not share_compare:
        raise UserError("--profile-cells profiles each cell with and without prefix sharing: drop --no-share-compare")
    if resume:
        checks.bench_report("--out", out)
    _need_cuda("ruler")
    from .bench.ruler import main as bench_main

    bench_main(_bench_argv(out=out, samples=samples, lengths=lengths, model=model, preset=preset, impl=impl,
                           long_length=long_length, dump_fla_configs=dump_fla_configs,
                           profile_cells=",".join(cells) or None)
               + ([] if share_compare else ["--no-share-compare"]) + (["--resume"] if resume else [])
               + (["--warm-every-cell"] if warm_every_cell else []))


@bench_app.command("backend")
@user_errors
def bench_backend(
    out: Annotated[Path, typer.Option(help="JSON to write.")] = Path("results/bench/backend.json"),
    models: Annotated[str, typer.Option(help="GDN-2 presets and/or fla baselines (kda, gated_deltanet, mamba2), "
                                        "comma-separated.")] = "gdn2_1.3B,kda",
    limit: Annotated[int, typer.Option(help="Documents per task.")] = 40,
    impl: Annotated[str, typer.Option(help="How the gdn2 backend runs GDN-2: auto, inference, reference.")] = "auto",
) -> None:
    """The Table 2 request mix (log-likelihoods) through the gdn2 backend and lm-eval's stock hf backend."""
    from .model.configuration_gdn2 import PRESETS

    checks.writable_file("--out", out)
    from .bench.backend import FLA_BASELINES

    checks.comma_subset("--models", models, (*PRESETS, *FLA_BASELINES))
    checks.at_least("--limit", limit, 1)
    checks.choice("--impl", impl, checks.IMPLS)
    from .bench.backend import main as bench_main

    bench_main(_bench_argv(out=out, models=models, limit=limit, impl=impl))


tasks_app = typer.Typer(help="Evaluation tasks: list them, or write RULER samples to a file.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")


@tasks_app.command("list")
@user_errors
def tasks_list(
    tasks_dir: Annotated[Path | None, typer.Option(help="Also list the tasks defined in this folder.")] = None,
) -> None:
    """Every task of the built-in suites (and of --tasks-dir) with a one-line description."""
    checks.existing_dir("--tasks-dir", tasks_dir)
    from .ruler import TASKS
    from .suites import SUITES, TABLE2_COLUMNS

    table = Table(title="tasks")
    for col in ("task", "suites", "what it measures"):
        table.add_column(col)
    metrics = {task: f"{col} ({metric})" for col, task, metric in TABLE2_COLUMNS}
    seen = dict.fromkeys(t for tasks in SUITES.values() for t in tasks)
    for task in seen:
        in_suites = ", ".join(name for name, tasks in SUITES.items() if task in tasks)
        what = TASKS[task].description if task in TASKS else f"Table 2 column {metrics.get(task, task)}"
        table.add_row(task, in_suites, what)
    if tasks_dir is not None:
        from .runner import task_manager

        manager = task_manager(tasks_dir, tasks=[])
        for name in sorted(manager.all_tasks):
            path = str(getattr(manager.task_index.get(name), "yaml_path", "") or "")
            if path.startswith(str(tasks_dir.resolve())) or path.startswith(str(tasks_dir)):
                table.add_row(name, "(your folder)", str(path))
    console.print(table)


@tasks_app.command("generate")
@user_errors
def tasks_generate(
    task: Annotated[str, typer.Argument(help="A RULER task, e.g. niah_single_2 (see `gdn2-eval tasks list`).")],
    length: Annotated[str, typer.Option(help="Target context length in tokens, e.g. 4k or 4096.")],
    tokenizer: Annotated[str, typer.Option(help="Tokenizer directory of the model to be evaluated.")],
    out: Annotated[Path, typer.Option(help="Output .jsonl file (RULER's format).")],
    samples: Annotated[int, typer.Option(help="Number of samples.")] = 500,
    seed: Annotated[int | None, typer.Option(help="Generation seed [default: ruler.DEFAULT_SEED].")] = None,
    haystack: Annotated[Path | None, typer.Option(help="Essay haystack: RULER's essay JSON or plain text.")] = None,
) -> None:
    """Write RULER samples (index, input, outputs, length, answer_prefix, ...) as JSON lines."""
    from .names import resolve_name

    checks.ruler_task(task)
    n_tokens = checks.length("--length", length)
    checks.writable_file("--out", out)
    checks.at_least("--samples", samples, 1)
    checks.at_least("--seed", seed, 0)
    checks.existing_file("--haystack", haystack)
    source = resolve_name(tokenizer, "tokenizer")  # before any heavy import: an unknown name fails at once
    from .ruler import DEFAULT_SEED, generate_samples, load_tokenizer, write_jsonl

    tok = load_tokenizer(source)
    docs = generate_samples(task, n_tokens, samples, tok, seed=DEFAULT_SEED if seed is None else seed,
                            haystack=haystack)
    write_jsonl(docs, out)
    console.print(f"wrote {len(docs)} samples of {task} at {n_tokens} tokens to {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
