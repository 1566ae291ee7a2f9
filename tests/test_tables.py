"""The paper's Tables 2-5 from the reported numbers, value for value and mark for mark; runs placed among them;
the table / paper commands and their bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gdn2_eval import results, tables
from gdn2_eval.cli import app
from gdn2_eval.suites import TABLE2_COLUMNS

PAPER = json.loads((Path(__file__).parent.parent / "results" / "paper" / "gdn2_paper_results.json").read_text())
SUMMARY_HEADER = ["model", "family", "suite", "task", "metric", "context_length", "value", "n_samples"]


def make_run(out: Path, label: str = "my-gdn2", family: str = "hybrid", rows=(), gate_ablation: str | None = "none",
             samples: dict | None = None, schema_version: int = 1) -> Path:
    """A run directory as `gdn2-eval run` writes it: results.json, summary.csv and samples/<task>.jsonl.
    `rows` are (task, metric, context_length or None, value)."""
    out.mkdir(parents=True, exist_ok=True)
    model = {"name": label, "path": f"/models/{label}", "hash": "ab" * 32, "family": family, "kernel": "torch",
             "layout": "GS" * 9 if family == "hybrid" else "G" * 18}
    if gate_ablation is not None:
        model["gate_ablation"] = gate_ablation
    (out / "results.json").write_text(json.dumps({"schema_version": schema_version, "model": model, "label": label,
                                                  "suite": "custom", "results": {}}))
    with (out / "summary.csv").open("w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SUMMARY_HEADER)
        for task, metric, ctx, value in rows:
            w.writerow([label, family, "custom", task, metric, "" if ctx is None else ctx, value, 100])
    for task, records in (samples or {}).items():
        (out / "samples").mkdir(exist_ok=True)
        (out / "samples" / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


@pytest.fixture(scope="module")
def paper_df():
    return results.load()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def column_of(number: int) -> dict[str, tables.Column]:
    return {c.key: c for c in tables.layout(number).columns}


def test_load_gives_the_tidy_columns_and_reported_runs(paper_df):
    assert list(paper_df.columns) == results.COLUMNS
    assert set(paper_df["source"]) == {"reported"} and len(paper_df) == len(PAPER["rows"])
    assert set(paper_df["run"]) == {"paper:table2", "paper:table3", "paper:table4", "paper:table5"}
    gdn2 = paper_df[(paper_df["run"] == "paper:table3") & (paper_df["model"] == "Gated DeltaNet-2")
                    & (paper_df["family"] == "hybrid") & (paper_df["task"] == "niah_single_2")
                    & (paper_df["context_length"] == 4096)]
    assert gdn2["metric"].tolist() == ["string_match_all"] and gdn2["value"].tolist() == [57.9]


@pytest.mark.parametrize("number", [2, 3, 4, 5])
def test_reported_tables_equal_the_json_value_for_value(paper_df, number):
    table = tables.build(paper_df, number)
    cols = column_of(number)
    want = [r for r in PAPER["rows"] if r["table"] == f"table{number}"]
    models = list(dict.fromkeys((r["family"], r["model"]) for r in want))
    assert [(r.family, r.model) for r in table.rows] == models  # the paper's blocks and order, nothing added
    assert all(r.source == "reported" for r in table.rows) and not table.notes  # no dashes
    parsed = list(csv.DictReader(io.StringIO(tables.render(table, "csv"))))
    assert list(parsed[0])[:2] == ["family", "model"]
    assert list(parsed[0])[2:-1] == [c.header for c in table.layout.columns]
    by_model = {(p["family"], p["model"]): p for p in parsed}
    for r in want:
        key = r["metric"] if r["context_length"] is None else f"{r['metric']}@{r['context_length']}"
        col = cols[key]
        text = by_model[(r["family"], r["model"])][col.header]
        assert text == f"{r['value']:.{col.decimals}f}", (r, text)
        assert float(text) == r["value"]  # the paper's rounding loses nothing
    # decimals: 2 in Tables 2 and 4, 1 in Table 3 (RULER), both in Table 5; each needed by some value of the paper
    by_decimals: dict[int, list[float]] = {}
    for r in want:
        key = r["metric"] if r["context_length"] is None else f"{r['metric']}@{r['context_length']}"
        by_decimals.setdefault(cols[key].decimals, []).append(r["value"])
    assert sorted(by_decimals) == {2: [2], 3: [1], 4: [2], 5: [1, 2]}[number]
    for decimals, values in by_decimals.items():
        assert any(round(v, decimals - 1) != v for v in values), decimals
    assert len(want) == len(models) * len(table.layout.columns)


@pytest.mark.parametrize("number", [2, 3, 4, 5])
def test_marks_follow_the_rule_in_every_block_and_column(paper_df, number):
    table = tables.build(paper_df, number)
    marks = table.marks()
    for fam in dict.fromkeys(r.family for r in table.rows):
        block = [r for r in table.rows if r.family == fam]
        for i, col in enumerate(table.layout.columns):
            values = {r.model: r.cells[i].value for r in block}
            ordered = sorted(set(values.values()), reverse=not col.lower_is_better)
            for model, v in values.items():
                better = sum(1 for w in values.values() if (w < v if col.lower_is_better else w > v))
                want = "bold" if v == ordered[0] else "underline" if better == 1 else None
                assert marks.get((fam, model, col.header)) == want, (fam, model, col.header)


def test_examples_of_bold_and_underline(paper_df):
    t3 = tables.build(paper_df, 3)
    m = t3.marks()
    assert m[("hybrid", "Mamba-3 (SISO)", "S-NIAH-2 4K")] == "bold"
    assert m[("hybrid", "Gated DeltaNet-2", "S-NIAH-2 4K")] == "underline"
    assert ("hybrid", "Gated DeltaNet", "S-NIAH-2 4K") not in m  # 57.3: third
    hybrid = tables.render(t3, "md").split("| *Hybrid")[1].splitlines()
    col = [c.header for c in t3.layout.columns].index("S-NIAH-2 4K") + 1
    assert next(x for x in hybrid if x.startswith("| Mamba-3 (SISO) |")).split(" | ")[col] == "**58.2**"
    assert next(x for x in hybrid if x.startswith("| Gated DeltaNet-2 |")).split(" | ")[col] == "<u>57.9</u>"
    assert next(x for x in hybrid if x.startswith("| Gated DeltaNet |")).split(" | ")[col] == "57.3"
    tex = tables.render(t3, "latex")
    assert r"\textbf{58.2}" in tex and r"\underline{57.9}" in tex and r"\multicolumn{4}{c}{S-NIAH-1}" in tex
    # lower is better for perplexity (Table 2, hybrid, Wiki. ppl: 15.54 best, 15.62 second)
    m2 = tables.build(paper_df, 2).marks()
    assert m2[("hybrid", "Mamba-3 (SISO)", "Wiki. ppl")] == "bold"
    assert m2[("hybrid", "Gated DeltaNet-2", "Wiki. ppl")] == "underline"
    # ties: two at 44.70 share second place (Table 4 hybrid SQuAD); five tied best leave no second (Table 3)
    m4 = tables.build(paper_df, 4).marks()
    assert m4[("hybrid", "Mamba-3 (SISO)", "SQuAD")] == "bold"
    assert m4[("hybrid", "Mamba-3 (MIMO)", "SQuAD")] == m4[("hybrid", "Gated DeltaNet-2", "SQuAD")] == "underline"
    assert ("recurrent", "Gated DeltaNet", "S-NIAH-1 1K") not in m  # 99.8 below five tied at 100.0


def test_a_run_appears_in_its_family_block_and_changes_the_bolding(tmp_path):
    run = make_run(tmp_path / "hyb", rows=[("niah_single_2", "string_match_all", 4096, 60.04),
                                           ("niah_single_1", "string_match_all", 1024, 100.0),
                                           ("wikitext", "word_perplexity", None, 15.0)])
    rec = make_run(tmp_path / "rec", label="my-rec", family="recurrent",
                   rows=[("niah_single_2", "string_match_all", 4096, 93.0)])
    df = results.load(run, rec)
    t3 = tables.build(df, 3)
    names = [(r.family, r.model, r.source) for r in t3.rows]
    assert names.index(("hybrid", "my-gdn2", "run")) == len(names) - 1
    i = names.index(("recurrent", "my-rec", "run"))
    assert names[i - 1] == ("recurrent", "Gated DeltaNet-2", "reported") and names[i + 1][0] == "hybrid"
    m = t3.marks()
    assert m[("hybrid", "my-gdn2", "S-NIAH-2 4K")] == "bold"
    assert m[("hybrid", "Mamba-3 (SISO)", "S-NIAH-2 4K")] == "underline"
    assert ("hybrid", "Gated DeltaNet-2", "S-NIAH-2 4K") not in m
    # a tie with the best: both bold, and the second best is no longer underlined
    assert m[("recurrent", "my-rec", "S-NIAH-2 4K")] == m[("recurrent", "Gated DeltaNet-2", "S-NIAH-2 4K")] == "bold"
    assert ("recurrent", "KDA", "S-NIAH-2 4K") not in m
    # the recurrent block does not see the hybrid run
    assert m[("recurrent", "Gated DeltaNet-2", "S-NIAH-2 8K")] == "bold"
    # lower is better: a perplexity of 15.00 takes the bold from 15.54
    m2 = tables.build(df, 2).marks()
    assert m2[("hybrid", "my-gdn2", "Wiki. ppl")] == "bold"
    assert m2[("hybrid", "Mamba-3 (SISO)", "Wiki. ppl")] == "underline"
    # the run's row: its values, dashes with footnotes for the rest, marked as a run
    md = tables.render(t3, "md")
    line = next(x for x in md.splitlines() if x.startswith("| my-gdn2 †"))
    assert "**60.0**" in line and "**100.0**" in line and line.count("–ᵃ") == 12
    assert "ᵃ not in the run's results (my-gdn2: S-NIAH-1 2K" in md and f"my-gdn2: {run}" in md
    tex = tables.render(t3, "latex")
    assert r"my-gdn2$^\dagger$" in tex and r"--\textsuperscript{a}" in tex
    row = next(r for r in csv.DictReader(io.StringIO(tables.render(t3, "csv"))) if r["model"] == "my-gdn2")
    assert row["S-NIAH-2 4K"] == "60.0" and row["S-NIAH-2 8K"] == "" and row["source"] == "run"


def test_avg_columns_are_computed_by_the_paper_rules(tmp_path, paper_df):
    accs = {t: 50.0 + i for i, (_, t, m) in enumerate(TABLE2_COLUMNS) if m in ("acc", "acc_norm")}
    metric = {t: m for _, t, m in TABLE2_COLUMNS if m in ("acc", "acc_norm")}
    full = make_run(tmp_path / "full", label="full", rows=[(t, metric[t], None, v) for t, v in accs.items()]
                    + [("lambada_openai", "perplexity", None, 9.0)])
    part = make_run(tmp_path / "part", label="part", rows=[(t, metric[t], None, v) for t, v in accs.items()
                                                          if t != "boolq"])
    recall = make_run(tmp_path / "recall", label="recall", family="recurrent", rows=[
        (task, m, None, 10.0 * (i + 1)) for i, (_, _, task, m) in enumerate(tables.TABLE4_SPEC)])
    df = results.load(full, part, recall)
    frame = tables.build(df, 2).frame().set_index("model")
    assert frame.loc["full", "Avg."] == round(sum(accs.values()) / 9, 2)
    assert frame.loc["full", "LMB. acc"] == accs["lambada_openai"] and frame.isna().loc["part", "Avg."]
    t2 = tables.build(df, 2)
    assert "part: Avg. lacks 1 of 9 (boolq)" in tables.render(t2, "md")
    assert tables.build(df, 4).frame().set_index("model").loc["recall", "Avg."] == 35.0
    t5 = tables.build(df, 5).frame().set_index("model")
    assert t5.loc["recall", "Recall Avg."] == 35.0
    # the same rule on the paper's own cells gives its reported Avg. (it averages unrounded values)
    for number, avg_col in ((2, "Avg."), (4, "Avg.")):
        lay = tables.layout(number)
        avg = next(c for c in lay.columns if c.header == avg_col)
        parts = [c.header for c in lay.columns if c.cell in avg.average_of]
        f = tables.build(paper_df, number).frame()
        assert len(parts) == (9 if number == 2 else 6)
        assert ((f[parts].mean(axis=1) - f[avg_col]).abs() <= 0.005 + 1e-9).all()


def test_table5_places_gate_ablation_runs_after_their_paper_rows(tmp_path):
    rows = [("wikitext", "word_perplexity", None, 16.0), ("niah_single_2", "string_match_all", 4096, 91.0)]
    erase = make_run(tmp_path / "e", label="ck", family="recurrent", gate_ablation="scalar_erase", rows=rows)
    write = make_run(tmp_path / "w", label="ck", family="recurrent", gate_ablation="scalar_write", rows=rows)
    none = make_run(tmp_path / "n", label="ck", family="recurrent", gate_ablation="none", rows=rows)
    other = make_run(tmp_path / "o", label="gdn-baseline", family="recurrent", gate_ablation=None, rows=rows)
    df = results.load(erase, write, none, other)
    names = [r.model for r in tables.build(df, 5).rows]
    assert names == ["w-only (scalar b, channel-wise w)", "ck [scalar_erase]",
                     "b-only (channel-wise b, scalar w)", "ck [scalar_write]",
                     "Gated DeltaNet-2 (b in [0,1])", "ck", "expanded erase range (b in [0,2])"]
    assert "gdn-baseline" in tables.build(df, 3).frame()["model"].tolist()  # not a GDN-2: only outside Table 5


def test_table2_layout_agrees_with_the_suite_definition():
    lay = tables.layout(2)
    assert [(c.header, c.task, c.metric) for c in lay.columns[:-1]] == TABLE2_COLUMNS
    assert [c.lower_is_better for c in lay.columns].count(True) == 2


def test_lm_eval_ruler_length_metrics_are_read_as_string_match_all(tmp_path):
    run = make_run(tmp_path / "r", rows=[("niah_single_1", "4096", None, 0.75), ("niah_single_1", "8192", None, -1)])
    df = results.load(run, baselines="none")
    assert df[["task", "metric", "context_length", "value"]].values.tolist() == [
        ["niah_single_1", "string_match_all", 4096, 75.0]]


def test_table_command_formats_and_files(tmp_path):
    run = make_run(tmp_path / "run", rows=[("swde", "contains", None, 45.0)])
    res = cli("table", run, "--table", "4", "--format", "latex")
    assert res.exit_code == 0, res.output
    assert r"\begin{tabular}" in res.stdout and "my-gdn2" in res.stdout and r"\textbf{45.00}" in res.stdout
    out = tmp_path / "t.csv"
    res = cli("table", run, "-t", "4", "-f", "csv", "--baselines", "none", "--out", out)
    assert res.exit_code == 0, res.output
    assert out.read_text().splitlines() == ["family,model,SWDE,SQuAD,FDA,TQA,NQ,Drop,Avg.,source",
                                            "hybrid,my-gdn2,45.00,,,,,,,run"]
    # a folder of run directories is searched
    with_paper = cli("table", tmp_path, "-t", "4").stdout
    assert "my-gdn2" in with_paper and "other rows are the paper's reported numbers" in with_paper
    # without the paper's rows the footer does not speak of them
    alone = cli("table", run, "-t", "4", "--baselines", "none").stdout
    assert "† evaluated here with gdn2-eval" in alone and "paper's reported numbers" not in alone


def test_paper_command_reproduces_the_tables_and_writes_figures(tmp_path, paper_df):
    res = cli("paper", "--out", tmp_path / "out", "--bench", Path(__file__).parent.parent / "results" / "bench")
    assert res.exit_code == 0, res.output
    for n in (2, 3, 4, 5):
        table = tables.build(paper_df, n)
        for fmt, suffix in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            assert (tmp_path / "out" / f"table{n}.{suffix}").read_text() == tables.render(table, fmt)
    for kind in ("niah-length", "commonsense", "throughput"):
        assert (tmp_path / "out" / f"{kind}.png").stat().st_size > 10_000
        assert (tmp_path / "out" / f"{kind}.pdf").read_bytes().startswith(b"%PDF")
    assert "skipped niah-depth" in res.stdout


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path):
    def fails(*args, expect):
        res = cli(*args)
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and expect in res.stderr, res.stderr

    (tmp_path / "empty").mkdir()
    fails("table", tmp_path / "empty", expect="holds no results (no results.json)")
    fails("table", tmp_path / "missing", expect="no such run directory")
    v2 = make_run(tmp_path / "v2", schema_version=2)
    fails("table", v2, expect="has schema_version 2; this gdn2-eval reads version 1")
    fails("table", "-t", "7", expect="there is no table 7; tables: 2, 3, 4, 5")
    fails("table", "-f", "html", expect="unknown format 'html'")
    fails("table", "--baselines", "arxiv", expect="unknown baselines 'arxiv'")
    fails("table", "--baselines", "none", expect="nothing to tabulate")
    half = make_run(tmp_path / "half")
    (half / "summary.csv").unlink()
    fails("table", half, expect="has results.json but no summary.csv")
    fails("plot", "--kind", "pie", expect="unknown plot kind 'pie'")
    fails("plot", "--kind", "niah-depth", expect="give run directories")
    fails("plot", make_run(tmp_path / "nolog"), "--kind", "niah-depth", expect="no per-sample RULER logs")
