"""The paper's Tables 2-5 as data, and their rendering (Markdown, LaTeX, CSV) with your runs placed among the baselines.

A table is a `Layout`: its columns in the paper's order, each naming the lm-eval task, metric and context length it
shows, its decimals and whether lower is better; an Avg. column names the cells it is the mean of. `build(df, n)`
turns a tidy frame from `gdn2_eval.results.load` into rows grouped by family:

* reported rows (run `paper:tableN`) in the paper's order, then your runs at the end of the block of their family
  (`BLOCK_OF_FAMILY` maps families the paper has no block for); in Table 5 a run sits after the paper row of its
  `gate_ablation` (`TABLE5_ROW_OF_ABLATION`).
* marks per family and column, on the displayed (rounded) values: **bold** where no value of the block is better,
  underlined where exactly one value of the block is better (competition ranking: two tied best values are both
  bold and nothing is underlined). Lower is better for perplexities.
* an Avg. that a row does not report is the mean of its columns at full precision, as the paper computes it, and only
  when all of them are there; a missing cell is a dash with a footnote saying why.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import UserError
from .ruler.registry import PAPER_GRID
from .suites import TABLE2_COLUMNS

CellKey = tuple[str, str, "int | None"]  # (task, metric, context_length)


@dataclass(frozen=True)
class Column:
    header: str  # Markdown and CSV header
    latex: str  # LaTeX header (the lower line under `group` in Table 3)
    key: str  # the paper's metric name in results/paper/gdn2_paper_results.json
    task: str  # lm-eval task
    metric: str  # metric in summary.csv
    context_length: int | None = None
    decimals: int = 2
    lower_is_better: bool = False
    average_of: tuple[CellKey, ...] = ()  # an Avg. column: the mean of these cells
    group: str | None = None  # upper header line (Table 3: the task under which the lengths stand)

    @property
    def cell(self) -> CellKey:
        return (self.task, self.metric, self.context_length)


@dataclass(frozen=True)
class Layout:
    number: int
    caption: str
    columns: tuple[Column, ...]
    families: tuple[str, ...] = ("recurrent", "hybrid")


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


# --- Table 2: language modelling and zero-shot common sense (spec: evaluation.md) --------------------------------
# (header, LaTeX header, paper key, task, metric, lower is better)
# How each Table 2 column is shown: (LaTeX header, paper key, lower is better). Its task and metric are the suite's
# (`suites.TABLE2_COLUMNS`, which `--suite table2` runs).
_TABLE2_LOOK: dict[str, tuple[str, str, bool]] = {
    "Wiki. ppl": (r"Wiki.\ ppl $\downarrow$", "wiki_ppl", True),
    "LMB. ppl": (r"LMB.\ ppl $\downarrow$", "lambada_ppl", True),
    "LMB. acc": (r"LMB.\ acc $\uparrow$", "lambada_acc", False),
    "PIQA": ("PIQA", "piqa_acc", False),
    "Hella.": ("Hella.", "hellaswag_acc_norm", False),
    "Wino.": ("Wino.", "winogrande_acc", False),
    "ARC-e": ("ARC-e", "arc_easy_acc", False),
    "ARC-c": ("ARC-c", "arc_challenge_acc", False),
    "OBQA": ("OBQA", "openbookqa_acc", False),
    "SIQA": ("SIQA", "siqa_acc", False),
    "BoolQ": ("BoolQ", "boolq_acc", False),
}
# (header, LaTeX header, paper key, lm-eval task, metric, lower is better)
TABLE2_SPEC: list[tuple[str, str, str, str, str, bool]] = [
    (header, _TABLE2_LOOK[header][0], _TABLE2_LOOK[header][1], task, metric, _TABLE2_LOOK[header][2])
    for header, task, metric in TABLE2_COLUMNS
]
# Avg. = mean of LAMBADA acc and the eight reasoning accuracies (9 values).
COMMONSENSE_AVG: CellKey = ("commonsense_avg", "acc", None)
COMMONSENSE_AVG_OF: tuple[CellKey, ...] = tuple((t, m, None) for _, _, _, t, m, low in TABLE2_SPEC if not low)

# --- Table 3: RULER needle-in-a-haystack, string_match_all in percent ---------------------------------------------
# (paper name, paper key, RULER task, context lengths): the lengths are the `--suite ruler` grid (`PAPER_GRID`).
TABLE3_SPEC: list[tuple[str, str, str, tuple[int, ...]]] = [
    (name, key, task, tuple(PAPER_GRID[task]))
    for name, key, task in (
        ("S-NIAH-1", "s_niah_1", "niah_single_1"),
        ("S-NIAH-2", "s_niah_2", "niah_single_2"),
        ("S-NIAH-3", "s_niah_3", "niah_single_3"),
        ("MK-NIAH-1", "mk_niah_1", "niah_multikey_1"),
    )
]
NIAH_METRIC = "string_match_all"
# Paper names of the other RULER NIAH tasks (plots label them with these).
NIAH_NAMES = {task: name for name, _, task, _ in TABLE3_SPEC} | {
    "niah_multikey_2": "MK-NIAH-2",
    "niah_multikey_3": "MK-NIAH-3",
    "niah_multivalue": "MV-NIAH",
    "niah_multiquery": "MQ-NIAH",
}

# --- Table 4: real-world recall; the task/metric of each column (change here, nowhere else) ----------------------
# (header, paper key, lm-eval task, metric)
TABLE4_SPEC: list[tuple[str, str, str, str]] = [
    ("SWDE", "swde", "swde", "contains"),
    ("SQuAD", "squad", "squad_completion", "contains"),
    ("FDA", "fda", "fda", "contains"),
    ("TQA", "triviaqa", "triviaqa", "contains"),
    ("NQ", "nq", "nq_open", "contains"),
    ("Drop", "drop", "drop", "contains"),
]
RECALL_AVG: CellKey = ("recall_avg", "contains", None)
RECALL_AVG_OF: tuple[CellKey, ...] = tuple((t, m, None) for _, _, t, m in TABLE4_SPEC)

# --- Table 5: gate ablations of the recurrent GDN-2 ----------------------------------------------------------------
# results.json model.gate_ablation -> the paper's row it is an instance of.
TABLE5_ROW_OF_ABLATION = {
    "scalar_erase": "w-only (scalar b, channel-wise w)",
    "scalar_write": "b-only (channel-wise b, scalar w)",
    "none": "Gated DeltaNet-2 (b in [0,1])",
}

# Families the paper has no block for: the block their rows go to (the paper lists its Transformer with the hybrids).
BLOCK_OF_FAMILY = {"transformer": "hybrid"}
FAMILY_TITLES = {"recurrent": "Recurrent", "hybrid": "Hybrid (recurrent + SWA)"}


def _table2() -> Layout:
    cols = [Column(h, lx, key, t, m, None, 2, low) for h, lx, key, t, m, low in TABLE2_SPEC]
    cols.append(Column("Avg.", r"Avg.\ $\uparrow$", "avg_acc", *COMMONSENSE_AVG, 2, False, COMMONSENSE_AVG_OF))
    return Layout(
        2,
        "Language modelling (perplexity, lower is better) and zero-shot common-sense reasoning (accuracy in %; "
        "Hella. is acc_norm). Avg. is the mean of LMB. acc and the eight reasoning accuracies.",
        tuple(cols),
    )


def _table3() -> Layout:
    cols = [
        Column(f"{name} {_k(n)}", _k(n), f"{key}@{n}", task, NIAH_METRIC, n, 1, group=name)
        for name, key, task, lengths in TABLE3_SPEC
        for n in lengths
    ]
    return Layout(
        3,
        "RULER needle-in-a-haystack accuracy (string_match_all, %) by context length (K = 1024 tokens).",
        tuple(cols),
    )


def _table4() -> Layout:
    cols = [Column(h, h, key, t, m, None, 2) for h, key, t, m in TABLE4_SPEC]
    cols.append(Column("Avg.", "Avg.", "avg", *RECALL_AVG, 2, False, RECALL_AVG_OF))
    return Layout(4, "Real-world recall (%, inputs truncated to 2K tokens). Avg. is the mean of the six tasks.",
                  tuple(cols))


def _table5() -> Layout:
    t2 = {key: (h, lx, t, m, low) for h, lx, key, t, m, low in TABLE2_SPEC}
    cols = [Column(t2[k][0], t2[k][1], k, t2[k][2], t2[k][3], None, 2, True) for k in ("wiki_ppl", "lambada_ppl")]
    cols.append(Column("Common-sense Avg.", r"CS Avg.\ $\uparrow$", "commonsense_avg", *COMMONSENSE_AVG, 2, False,
                       COMMONSENSE_AVG_OF))
    for name, key, task, n in (("S-NIAH-2", "s_niah_2", "niah_single_2", 4096),
                               ("S-NIAH-3", "s_niah_3", "niah_single_3", 2048),
                               ("MK-NIAH-1", "mk_niah_1", "niah_multikey_1", 4096)):
        cols.append(Column(f"{name} {_k(n)}", f"{name} {_k(n)}", f"{key}@{n}", task, NIAH_METRIC, n, 1))
    cols.append(Column("Recall Avg.", "Recall Avg.", "recall_avg", *RECALL_AVG, 2, False, RECALL_AVG_OF))
    return Layout(
        5,
        "Gate ablations of the recurrent GDN-2: one gate averaged over its channels at run time (same parameters). "
        "Common-sense Avg. as in Table 2, Recall Avg. as in Table 4.",
        tuple(cols),
        families=("recurrent",),
    )


LAYOUTS: dict[int, Layout] = {lay.number: lay for lay in (_table2(), _table3(), _table4(), _table5())}
FORMATS = ("md", "latex", "csv")
_SUFFIX = {"md": "md", "latex": "tex", "csv": "csv"}


def layout(number: int) -> Layout:
    if number not in LAYOUTS:
        raise UserError(f"there is no table {number}; tables: {', '.join(map(str, LAYOUTS))}")
    return LAYOUTS[number]


def paper_metric_map() -> dict[tuple[str, str], CellKey]:
    """(paper table, paper metric key) -> (task, metric, context_length), from the layouts."""
    out: dict[tuple[str, str], CellKey] = {}
    for lay in LAYOUTS.values():
        for c in lay.columns:
            out[(f"table{lay.number}", c.key)] = c.cell
    return out


# --- building --------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    value: float | None  # as displayed (rounded); None for a dash
    text: str
    mark: str | None = None  # "bold" | "underline"
    note: str | None = None  # footnote kind for a dash


@dataclass
class Row:
    family: str  # the block the row stands in
    model: str
    source: str  # "reported" | "run"
    runs: list[str]
    cells: list[Cell]


@dataclass
class Table:
    layout: Layout
    rows: list[Row]
    notes: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # footnote kind -> model -> cells
    skipped_runs: list[str] = field(default_factory=list)  # runs with none of the table's cells

    def frame(self) -> pd.DataFrame:
        """Displayed values (rounded, NaN for a dash) with `family`, `model`, `source` first."""
        data = [
            {"family": r.family, "model": r.model, "source": r.source,
             **{c.header: (math.nan if cell.value is None else cell.value) for c, cell in zip(self.layout.columns,
                                                                                             r.cells)}}
            for r in self.rows
        ]
        return pd.DataFrame(data)

    def marks(self) -> dict[tuple[str, str, str], str]:
        """(family, model, column header) -> "bold" | "underline"."""
        return {
            (r.family, r.model, c.header): cell.mark
            for r in self.rows
            for c, cell in zip(self.layout.columns, r.cells)
            if cell.mark
        }


_NOTE_TEXT = {
    "missing": "not in the run's results",
    "avg": "Avg. not computed: it needs every one of its columns",
    "unreported": "not reported in the paper",
}
_NOTE_ORDER = ("missing", "avg", "unreported")


def _round(value: float, decimals: int) -> float:
    return float(f"{value:.{decimals}f}")


def _cell_name(key: CellKey) -> str:
    task, metric, ctx = key
    return task + (f"@{ctx}" if ctx is not None else "")


def _values(group: pd.DataFrame) -> dict[CellKey, float]:
    out: dict[CellKey, float] = {}
    for task, metric, ctx, value in group[["task", "metric", "context_length", "value"]].itertuples(index=False):
        key = (task, metric, None if pd.isna(ctx) else int(ctx))
        if key not in out and value is not None and not pd.isna(value):
            out[key] = float(value)
    return out


def _row_cells(lay: Layout, values: dict[CellKey, float], source: str, model: str,
               notes: dict[str, dict[str, list[str]]]) -> list[Cell]:
    cells = []
    for col in lay.columns:
        value = values.get(col.cell)
        if value is None and col.average_of:
            parts = [values.get(k) for k in col.average_of]
            if all(p is not None for p in parts):
                value = sum(parts) / len(parts)
            else:
                missing = [_cell_name(k) for k, p in zip(col.average_of, parts) if p is None]
                if len(missing) < len(parts) or source == "run":
                    notes.setdefault("avg", {}).setdefault(model, []).append(
                        f"{col.header} lacks {len(missing)} of {len(parts)} ({', '.join(missing)})")
                    cells.append(Cell(None, "", note="avg"))
                    continue
        if value is None:
            kind = "unreported" if source == "reported" else "missing"
            notes.setdefault(kind, {}).setdefault(model, []).append(col.header)
            cells.append(Cell(None, "", note=kind))
            continue
        shown = _round(value, col.decimals)
        cells.append(Cell(shown, f"{value:.{col.decimals}f}"))
    return cells


def _mark(rows: list[Row], lay: Layout) -> None:
    for fam in dict.fromkeys(r.family for r in rows):
        block = [r for r in rows if r.family == fam]
        for i, col in enumerate(lay.columns):
            cells = [r.cells[i] for r in block if r.cells[i].value is not None]
            sign = 1.0 if col.lower_is_better else -1.0
            for cell in cells:
                better = sum(1 for other in cells if sign * other.value < sign * cell.value)
                cell.mark = "bold" if better == 0 else "underline" if better == 1 else None


def build(df: pd.DataFrame, number: int) -> Table:
    """Table `number` from a frame of `gdn2_eval.results.load` (reported rows of that table plus every run)."""
    lay = layout(number)
    notes: dict[str, dict[str, list[str]]] = {}
    reported = df[(df["source"] == "reported") & (df["run"] == f"paper:table{number}")]
    runs = df[df["source"] != "reported"]
    info = df.attrs.get("runs", {})

    rows: list[Row] = []
    for (family, model), group in reported.groupby(["family", "model"], sort=False):
        rows.append(Row(BLOCK_OF_FAMILY.get(family, family), model, "reported", [f"paper:table{number}"],
                        _row_cells(lay, _values(group), "reported", model, notes)))

    wanted = {c.cell for c in lay.columns} | {k for c in lay.columns for k in c.average_of}
    skipped = []
    run_rows: list[tuple[Row, str | None]] = []
    for model, group in runs.groupby("model", sort=False):
        run_ids = list(dict.fromkeys(group["run"]))
        values = _values(group)
        if not wanted & set(values):
            skipped.append(model)
            continue
        family = str(group["family"].iloc[0])
        ablation = next((info[r].get("gate_ablation") for r in run_ids if r in info), None)
        if number == 5 and ablation is None:
            skipped.append(model)  # Table 5 holds GDN-2 models only (those with a gate_ablation)
            continue
        row = Row(BLOCK_OF_FAMILY.get(family, family), model, "run", run_ids,
                  _row_cells(lay, values, "run", model, notes))
        run_rows.append((row, TABLE5_ROW_OF_ABLATION.get(ablation or "none") if number == 5 else None))

    families = list(lay.families)
    for r, _ in run_rows:
        if r.family not in families:
            families.append(r.family)
    ordered: list[Row] = []
    for fam in families:
        block = [r for r in rows if r.family == fam]
        for row, after in run_rows:
            if row.family != fam:
                continue
            pos = next((i for i, r in enumerate(block) if r.model == after), None)
            if pos is None:
                block.append(row)
            else:  # after the paper row of its ablation and any runs already placed there
                while pos + 1 < len(block) and block[pos + 1].source == "run":
                    pos += 1
                block.insert(pos + 1, row)
        ordered.extend(block)
    _mark(ordered, lay)
    return Table(lay, ordered, notes, skipped)


# --- rendering --------------------------------------------------------------------------------------------------------

_SUP = dict(zip("abcdefghij", "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲ"))


def _letters(table: Table) -> dict[str, str]:
    kinds = [k for k in _NOTE_ORDER if k in table.notes]
    return {k: "abcdefghij"[i] for i, k in enumerate(kinds)}


def _run_names(table: Table) -> list[str]:
    return [f"{r.model}: {', '.join(r.runs)}" for r in table.rows if r.source == "run"]


def _footer(table: Table, marker=lambda letter: _SUP[letter]) -> list[str]:
    letters = _letters(table)
    lines = ["Bold: best per family and column; underlined: second best (↓: lower is better)."]
    if any(r.source == "run" for r in table.rows):
        reported = any(r.source == "reported" for r in table.rows)
        lines.append("† evaluated here with gdn2-eval (" + "; ".join(_run_names(table)) + ")"
                     + ("; other rows are the paper's reported numbers." if reported else "."))
    for kind, letter in letters.items():
        details = "; ".join(f"{model}: {', '.join(cells)}" for model, cells in table.notes[kind].items())
        lines.append(f"{marker(letter)} {_NOTE_TEXT[kind]} ({details}).")
    if table.skipped_runs:
        lines.append(f"Not shown (none of this table's columns): {', '.join(table.skipped_runs)}.")
    return lines


def _family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family.capitalize())


def to_markdown(table: Table) -> str:
    lay, letters = table.layout, _letters(table)
    headers = [c.header + (" ↓" if c.lower_is_better else "") for c in lay.columns]
    out = [f"**Table {lay.number}.** {lay.caption}", "", "| Model | " + " | ".join(headers) + " |",
           "|:--|" + "--:|" * len(headers)]
    family = None
    for row in table.rows:
        if row.family != family:
            family = row.family
            out.append(f"| *{_family_title(family)}* |" + " |" * len(headers))
        texts = []
        for cell in row.cells:
            if cell.value is None:
                texts.append("–" + _SUP[letters[cell.note]])
            elif cell.mark == "bold":
                texts.append(f"**{cell.text}**")
            elif cell.mark == "underline":
                texts.append(f"<u>{cell.text}</u>")
            else:
                texts.append(cell.text)
        name = row.model + (" †" if row.source == "run" else "")
        out.append(f"| {name} | " + " | ".join(texts) + " |")
    out.append("")
    out += [line + "  " for line in _footer(table)[:-1]] + _footer(table)[-1:]
    return "\n".join(out) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\x00")
    return text.replace("\x00", r"\textbackslash{}").replace("↓", r"$\downarrow$").replace("†", r"$^\dagger$")


def to_latex(table: Table) -> str:
    lay, letters = table.layout, _letters(table)
    n = len(lay.columns)
    out = [f"% Table {lay.number}, generated by gdn2-eval (gdn2_eval/tables.py); needs \\usepackage{{booktabs}}",
           r"\begin{table}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{3pt}",
           r"\begin{tabular}{l" + "r" * n + "}", r"\toprule"]
    if any(c.group for c in lay.columns):
        spans, rules, start = [], [], 2
        for group in dict.fromkeys(c.group for c in lay.columns):
            width = sum(1 for c in lay.columns if c.group == group)
            spans.append(rf"\multicolumn{{{width}}}{{c}}{{{_tex(group or '')}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        out += [" & " + " & ".join(spans) + r" \\", " ".join(rules)]
    out.append("Model & " + " & ".join(c.latex for c in lay.columns) + r" \\")
    family = None
    for row in table.rows:
        if row.family != family:
            family = row.family
            out += [r"\midrule", rf"\multicolumn{{{n + 1}}}{{l}}{{\textit{{{_tex(_family_title(family))}}}}} \\"]
        texts = []
        for cell in row.cells:
            if cell.value is None:
                texts.append(rf"--\textsuperscript{{{letters[cell.note]}}}")
            elif cell.mark == "bold":
                texts.append(rf"\textbf{{{cell.text}}}")
            elif cell.mark == "underline":
                texts.append(rf"\underline{{{cell.text}}}")
            else:
                texts.append(cell.text)
        name = _tex(row.model) + (r"$^\dagger$" if row.source == "run" else "")
        out.append(name + " & " + " & ".join(texts) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    footer = _footer(table, marker=lambda letter: f"\x01{letter}")
    caption = " ".join(_tex(line) for line in [lay.caption, *footer])
    caption = re.sub("\x01([a-j])", r"\\textsuperscript{\1}", caption)
    out += [rf"\caption{{{caption}}}", rf"\label{{tab:table{lay.number}}}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """`family`, `model`, the paper's columns (displayed values; empty for a dash), then `source`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["family", "model", *(c.header for c in table.layout.columns), "source"])
    for row in table.rows:
        w.writerow([row.family, row.model, *(cell.text for cell in row.cells), row.source])
    return buf.getvalue()


def render(table: Table, fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return {"md": to_markdown, "latex": to_latex, "csv": to_csv}[fmt](table)


def write_all(df: pd.DataFrame, out: Path, numbers: Sequence[int] = tuple(LAYOUTS)) -> list[Path]:
    """tableN.md, tableN.tex and tableN.csv for each table into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for number in numbers:
        table = build(df, number)
        for fmt in FORMATS:
            path = out / f"table{number}.{_SUFFIX[fmt]}"
            path.write_text(render(table, fmt))
            written.append(path)
    return written
