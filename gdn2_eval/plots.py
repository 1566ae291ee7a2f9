"""Figures in one style (matplotlib, drawn on the non-interactive Agg canvas): RULER accuracy against context length,
needle depth x length heatmaps, common-sense accuracies, and throughput / memory against context length. Each
function returns a Figure; `save` writes it as PNG and PDF.

Reported baselines are dashed with hollow markers, your runs solid with filled markers; a model has the same colour
in every figure. Figures are `matplotlib.figure.Figure` objects with an Agg canvas, not pyplot figures: nothing
depends on a display or on pyplot's global state, and a notebook's own backend is left alone.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .errors import UserError
from .tables import BLOCK_OF_FAMILY, FAMILY_TITLES, NIAH_METRIC, NIAH_NAMES, TABLE3_SPEC

KINDS = ("niah-length", "niah-depth", "commonsense", "throughput")
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.dpi": 200,
    "pdf.fonttype": 42,
}
MODEL_COLORS = {
    "Gated DeltaNet-2": "#d62728",
    "Gated DeltaNet": "#1f77b4",
    "KDA": "#2ca02c",
    "Mamba-2": "#9467bd",
    "Mamba-3 (SISO)": "#ff7f0e",
    "Mamba-3 (MIMO)": "#8c564b",
    "Transformer": "#7f7f7f",
}
RUN_COLORS = ["#000000", "#17becf", "#e377c2", "#bcbd22", "#393b79", "#637939", "#843c39", "#7b4173"]
MODEL_MARKERS = {"Gated DeltaNet-2": "o", "Gated DeltaNet": "s", "KDA": "^", "Mamba-2": "v",
                 "Mamba-3 (SISO)": "D", "Mamba-3 (MIMO)": "P", "Transformer": "X"}
FAMILY_ORDER = ("recurrent", "hybrid")
DEFAULT_BENCH_DIR = Path("results/bench")


class _Palette:
    """Fixed colours for the paper's models; a run model gets the colour its name hashes to (the next free one on a
    clash, names in sorted order), so that it keeps its colour from figure to figure."""

    def __init__(self, models: Iterable[str]):
        self.colors = dict(MODEL_COLORS)
        taken: set[str] = set()
        for m in sorted(set(models) - set(MODEL_COLORS)):
            start = zlib.crc32(m.encode()) % len(RUN_COLORS)
            free = [RUN_COLORS[(start + i) % len(RUN_COLORS)] for i in range(len(RUN_COLORS))]
            color = next((c for c in free if c not in taken), free[0])
            self.colors[m] = color
            taken.add(color)

    def __call__(self, model: str) -> str:
        return self.colors.get(model, "#000000")


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _line_style(source: str) -> dict[str, Any]:
    if source == "reported":
        return dict(linestyle="--", linewidth=1.3, markersize=4.5, markerfacecolor="white", alpha=0.95)
    return dict(linestyle="-", linewidth=2.4, markersize=6, zorder=5)


def _k(n: float) -> str:
    n = int(n)
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _block(family: str) -> str:
    return BLOCK_OF_FAMILY.get(family, family)


def _families(df: pd.DataFrame, families: Sequence[str] | None) -> list[str]:
    if families:
        return list(families)
    runs = df[df["source"] != "reported"]
    present = runs if not runs.empty else df
    found = {_block(f) for f in present["family"]}
    return [f for f in FAMILY_ORDER if f in found] + sorted(found - set(FAMILY_ORDER))


def _legend_handles(entries: list[tuple[str, str]], palette: _Palette) -> list[Line2D]:
    return [Line2D([], [], color=palette(m), marker=MODEL_MARKERS.get(m, "o"),
                   label=m + (" (reported)" if src == "reported" else " (run)"), **_line_style(src))
            for m, src in entries]


def save(fig: Figure, out: str | Path) -> list[Path]:
    """Write `out` as .png and .pdf (the suffix of `out` is replaced); returns both paths."""
    out = Path(out)
    if out.suffix.lower() in (".png", ".pdf"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_name(out.name + ".png"), out.with_name(out.name + ".pdf")]
    with matplotlib.rc_context(STYLE):
        for p in paths:
            fig.savefig(p, bbox_inches="tight")
    return paths


# --- RULER accuracy against context length --------------------------------------------------------------------------


def _niah_rows(df: pd.DataFrame) -> pd.DataFrame:
    is_niah = df["task"].astype(str).str.startswith("niah_")
    rows = df[is_niah & (df["metric"] == NIAH_METRIC) & df["context_length"].notna()]
    # reported: Table 3 only (Table 5 repeats three cells for its ablation rows)
    return rows[(rows["source"] != "reported") | (rows["run"] == "paper:table3")]


def niah_length(df: pd.DataFrame, families: Sequence[str] | None = None,
                tasks: Sequence[str] | None = None) -> Figure:
    """Accuracy against context length: one panel per family (rows) and task (columns), one line per model."""
    rows = _niah_rows(df)
    if rows.empty:
        raise UserError("no RULER results to plot (summary rows of niah_* tasks with metric string_match_all)")
    fams = [f for f in _families(rows, families) if (rows["family"].map(_block) == f).any()]
    if not fams:
        raise UserError(f"no RULER results for famil{'y' if len(families or []) == 1 else 'ies'} "
                        f"{', '.join(families or [])}")
    order = [t for _, _, t, _ in TABLE3_SPEC]
    present = list(dict.fromkeys(rows["task"]))
    task_list = list(tasks) if tasks else [t for t in order if t in present] + sorted(set(present) - set(order))
    palette = _Palette(rows["model"])
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(len(fams), len(task_list), (2.9 * len(task_list) + 2.6, 2.7 * len(fams)), sharey=True)
        for i, fam in enumerate(fams):
            in_fam = rows[rows["family"].map(_block) == fam]
            entries: list[tuple[str, str]] = []
            for j, task in enumerate(task_list):
                ax = axes[i][j]
                sub = in_fam[in_fam["task"] == task]
                for (model, source), g in sub.groupby(["model", "source"], sort=False):
                    g = g.groupby("context_length", as_index=False)["value"].mean().sort_values("context_length")
                    ax.plot(g["context_length"].astype(float), g["value"], color=palette(model),
                            marker=MODEL_MARKERS.get(model, "o"), **_line_style(source))
                    if (model, source) not in entries:
                        entries.append((model, source))
                lengths = sorted({int(x) for x in rows.loc[rows["task"] == task, "context_length"]})
                ax.set_xscale("log", base=2)
                if lengths:
                    ax.set_xticks(lengths, [_k(n) for n in lengths])
                    ax.set_xlim(lengths[0] / 1.25, lengths[-1] * 1.25)
                ax.minorticks_off()
                ax.set_ylim(-3, 103)
                if i == 0:
                    ax.set_title(NIAH_NAMES.get(task, task))
                if i == len(fams) - 1:
                    ax.set_xlabel("context length (tokens)")
                if j == 0:
                    ax.set_ylabel(f"{FAMILY_TITLES.get(fam, fam)}\naccuracy (%)")
                if sub.empty:
                    ax.text(0.5, 0.5, "no results", transform=ax.transAxes, ha="center", va="center", color="0.5")
            axes[i][-1].legend(handles=_legend_handles(entries, palette), loc="center left",
                               bbox_to_anchor=(1.02, 0.5), frameon=False)
        fig.suptitle("RULER needle-in-a-haystack: accuracy against context length")
        fig.tight_layout()
    return fig


# --- needle depth x context length ------------------------------------------------------------------------------------


def niah_depth(samples: pd.DataFrame, tasks: Sequence[str] | None = None, bins: int = 10) -> Figure:
    """Heatmaps of mean accuracy by needle depth (rows, binned) and context length (columns), per model and task;
    `samples` is `gdn2_eval.results.niah_samples(...)`."""
    if samples.empty:
        raise UserError("no per-sample RULER logs with a needle depth in these runs "
                        "(samples/<task>.jsonl lines with doc.max_length, doc.depth and a string_match_all score)")
    task_list = list(tasks) if tasks else list(dict.fromkeys(samples["task"]))
    models = list(dict.fromkeys(samples["model"]))
    edges = np.linspace(0, 100, bins + 1)
    labels = [f"{edges[b]:.0f}-{edges[b + 1]:.0f}" for b in range(bins)]
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="0.88")
    with matplotlib.rc_context(STYLE):
        ncols = len(task_list)
        lengths_all = sorted(samples["context_length"].unique())
        width = max(3.2, 0.62 * len(lengths_all) + 1.6)
        fig, axes = _subplots(len(models), ncols, (width * ncols + 1.2, 0.3 * bins * len(models) + 1.4))
        image = None
        for i, model in enumerate(models):
            for j, task in enumerate(task_list):
                ax = axes[i][j]
                ax.grid(False)
                sub = samples[(samples["model"] == model) & (samples["task"] == task)]
                lengths = sorted(sub["context_length"].unique()) or lengths_all
                grid = np.full((bins, len(lengths)), np.nan)
                if not sub.empty:
                    b = np.clip(np.digitize(sub["depth"].to_numpy(float), edges[1:-1]), 0, bins - 1)
                    means = sub.assign(bin=b).groupby(["bin", "context_length"])["score"].mean()
                    for (bi, n), v in means.items():
                        grid[bi, lengths.index(n)] = v
                image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                                  interpolation="nearest")
                if len(lengths) <= 10:
                    for (bi, li), v in np.ndenumerate(grid):
                        if not math.isnan(v):
                            ax.text(li, bi, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                                    color="black" if 25 <= v <= 80 else "white")
                if sub.empty:
                    ax.text(0.5, 0.5, "no per-sample logs", transform=ax.transAxes, ha="center", va="center",
                            color="0.35")
                ax.set_xticks(range(len(lengths)), [_k(n) for n in lengths])
                ax.set_yticks(range(bins), labels, fontsize=7)
                ax.set_title(f"{model}: {NIAH_NAMES.get(task, task)}", fontsize=9)
                if i == len(models) - 1:
                    ax.set_xlabel("context length (tokens)")
                if j == 0:
                    ax.set_ylabel("needle depth (%)")
                for side in ("top", "right"):
                    ax.spines[side].set_visible(True)
        fig.suptitle("RULER accuracy by needle depth and context length")
        fig.tight_layout()
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.04, pad=0.03)
        bar.set_label("accuracy (%)")
    return fig


# --- common sense -----------------------------------------------------------------------------------------------------


def commonsense(df: pd.DataFrame, families: Sequence[str] | None = None) -> Figure:
    """Zero-shot common-sense accuracies (Table 2's accuracy columns and Avg.) per task, one marker per model."""
    from .tables import build

    table = build(df, 2)
    cols = [c for c in table.layout.columns if not c.lower_is_better]
    frame = table.frame()
    has_acc = frame[[c.header for c in cols]].notna().any(axis=1) if not frame.empty else frame.index == 0
    fams = [f for f in _families(df, families) if (has_acc & (frame["family"] == f)).any()]
    if not fams or frame.empty:
        raise UserError("no common-sense results to plot (Table 2 tasks: piqa, hellaswag, winogrande, ...)")
    palette = _Palette(frame["model"])
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(len(fams), 1, (11.5, 3.0 * len(fams)), sharex=True)
        for i, fam in enumerate(fams):
            ax = axes[i][0]
            block = frame[frame["family"] == fam]
            block = block[block[[c.header for c in cols]].notna().any(axis=1)]
            n = len(block)
            width = 0.72 / max(n, 1)
            for k in range(n):
                row = block.iloc[k]
                values = [row[c.header] for c in cols]
                x = np.arange(len(cols)) - 0.36 + width * (k + 0.5)
                model = row["model"]
                style = _line_style(row["source"])
                ax.plot(x, values, linestyle="none", marker=MODEL_MARKERS.get(model, "o"), color=palette(model),
                        markersize=style["markersize"] + 0.5, markerfacecolor=style.get("markerfacecolor"),
                        markeredgewidth=1.2, zorder=style.get("zorder", 2))
            for x in np.arange(len(cols) - 1) + 0.5:
                ax.axvline(x, color="0.85", linewidth=0.6, zorder=0)
            ax.grid(axis="x", visible=False)
            ax.set_xticks(range(len(cols)), [c.header for c in cols])
            ax.set_title(FAMILY_TITLES.get(fam, fam))
            ax.set_ylabel("accuracy (%)")
            entries = list(zip(block["model"], block["source"]))
            handles = [Line2D([], [], linestyle="none", color=palette(m), marker=MODEL_MARKERS.get(m, "o"),
                              markerfacecolor=_line_style(s).get("markerfacecolor"), markeredgewidth=1.2,
                              label=m + (" (reported)" if s == "reported" else " (run)")) for m, s in entries]
            ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        axes[-1][0].set_xlabel("task (accuracy; Hella. is acc_norm; Avg. as in Table 2)")
        fig.suptitle("Zero-shot common-sense accuracy per task")
        fig.tight_layout()
    return fig


# --- throughput and memory --------------------------------------------------------------------------------


def bench_records(paths: Iterable[str | Path] | None = None) -> pd.DataFrame:
    """Prefill and decode records of model benchmark JSON files (a folder is searched for *.json).

    Read: a dict with `records` (or a list) of records; `check == "prefill"` with `tokens`, `tokens_per_second`,
    `peak_gib`; `check == "decode"` with `prompt_tokens`, `decode_tokens_per_second`, `cache_mib`. Other records
    (kernel timings, accuracy checks) are skipped. The model is `preset` (else `model`), the device `device`.
    """
    if paths is None:  # results/bench of the working directory, else of the checkout
        from .results import REPO_ROOT

        paths = [DEFAULT_BENCH_DIR if DEFAULT_BENCH_DIR.is_dir() else REPO_ROOT / DEFAULT_BENCH_DIR]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.glob("*.json")))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such benchmark file or folder")
    rows = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        records = data.get("records", []) if isinstance(data, dict) else data if isinstance(data, list) else []
        device = data.get("device") if isinstance(data, dict) else None
        for r in records:
            if not isinstance(r, dict):
                continue
            model = str(r.get("preset") or r.get("model") or f.stem)
            dev = r.get("device") or device or "unknown device"
            if r.get("check") == "prefill" and isinstance(r.get("tokens_per_second"), (int, float)):
                rows.append(dict(model=model, kind="prefill", context_length=int(r["tokens"]),
                                 tokens_per_second=float(r["tokens_per_second"]),
                                 memory_mib=float(r["peak_gib"]) * 1024 if "peak_gib" in r else math.nan,
                                 device=dev, file=str(f)))
            elif r.get("check") == "decode" and isinstance(r.get("decode_tokens_per_second"), (int, float)):
                rows.append(dict(model=model, kind="decode", context_length=int(r["prompt_tokens"]),
                                 tokens_per_second=float(r["decode_tokens_per_second"]),
                                 memory_mib=float(r.get("cache_mib", math.nan)), device=dev, file=str(f)))
    return pd.DataFrame(rows, columns=["model", "kind", "context_length", "tokens_per_second", "memory_mib", "device",
                                       "file"])


def throughput(records: pd.DataFrame, figure2: Sequence[dict] | None = None) -> Figure:
    """Prefill throughput (with the paper's Figure 2 training throughput), decode throughput and memory against
    context length."""
    fig2 = pd.DataFrame(list(figure2 or []))
    if records.empty and fig2.empty:
        raise UserError("no benchmark records to plot (results/bench/*.json with prefill or decode records)")
    presets = list(dict.fromkeys(records["model"]))
    colors = {m: RUN_COLORS[(i + 1) % len(RUN_COLORS)] for i, m in enumerate(presets)}
    with matplotlib.rc_context(STYLE):
        fig, axes = _subplots(1, 3, (13.5, 4.6))
        axes = axes[0]
        ax_p, ax_d, ax_m = axes
        for i, model in enumerate(presets):
            size = max(4.0, 8.5 - 2.5 * i)  # equal values of two presets stay visible as nested markers
            sub = records[records["model"] == model]
            pre = sub[sub["kind"] == "prefill"].sort_values("context_length")
            dec = sub[sub["kind"] == "decode"].sort_values("context_length")
            c = colors[model]
            if not pre.empty:
                ax_p.plot(pre["context_length"], pre["tokens_per_second"] / 1e3, "-o", color=c, markersize=size,
                          label=f"{model} prefill (bench)")
                ax_m.plot(pre["context_length"], pre["memory_mib"], "-o", color=c, markersize=size,
                          label=f"{model} prefill peak")
            if not dec.empty:
                ax_d.plot(dec["context_length"], dec["tokens_per_second"], "-s", color=c, markersize=size,
                          label=f"{model} decode")
                ax_m.plot(dec["context_length"], dec["memory_mib"], "--s", color=c, markerfacecolor="white",
                          markersize=size, label=f"{model} decode cache")
        for model, g in (fig2.groupby("model", sort=False) if not fig2.empty else []):
            g = g.sort_values("seq_len")
            ax_p.plot(g["seq_len"], g["kilotokens_per_s"], "--D", color=MODEL_COLORS.get(model, "#d62728"),
                      markerfacecolor="white", label=f"{model} hybrid 1.3B training (paper Fig. 2)")
        titles = ("Prefill / training throughput", "Decode throughput (batch 1)", "GPU memory")
        ylabels = ("throughput (K tokens/s)", "decode speed (tokens/s)", "memory (MiB, log scale)")
        xlabels = ("context length (tokens)", "prompt length (tokens)", "context length (tokens)")
        for ax, title, yl, xl in zip(axes, titles, ylabels, xlabels):
            ax.set_title(title)
            ax.set_ylabel(yl)
            ax.set_xlabel(xl)
            ax.set_xscale("log", base=2)
            xs = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
            if xs:
                ax.set_xticks(xs, [_k(x) for x in xs])
                ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
            ax.minorticks_off()
            if ax.get_lines():
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False, fontsize=7.5, ncol=1)
            else:
                ax.text(0.5, 0.5, "no records", transform=ax.transAxes, ha="center", va="center", color="0.5")
        ax_m.set_yscale("log")
        for ax in (ax_p, ax_d):
            ax.set_ylim(bottom=0, top=max([1.0] + [max(line.get_ydata()) for line in ax.get_lines()]) * 1.25)
        devices = sorted(set(records["device"])) if not records.empty else []
        fig.suptitle("Throughput and memory against context length"
                     + (f" ({', '.join(devices)}; random weights)" if devices else ""))
        fig.tight_layout()
    return fig
