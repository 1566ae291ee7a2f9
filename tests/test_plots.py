"""Every plot kind writes a non-empty PNG and PDF with labelled axes; per-sample RULER logs and benchmark files are
read tolerantly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tables import make_run
from typer.testing import CliRunner

from gdn2_eval import plots, results
from gdn2_eval.cli import app

REPO = Path(__file__).parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def depth_samples(n_depths: int = 20) -> list[dict]:
    """Needles at n_depths depths and three lengths: found everywhere at 1K, only in the first half at 2K, and in
    lm-eval's own format (score under str(max_length), no depth key -> skipped) at 4K."""
    out = []
    for i in range(n_depths):
        depth = 100 * i / (n_depths - 1)
        out.append({"doc": {"max_length": 1024, "depth": depth}, "string_match_all": 1.0})
        out.append({"doc": {"max_length": 2048, "depth": [depth]}, "2048": 1.0 if depth < 50 else 0.0})
        out.append({"doc": {"max_length": 4096}, "4096": 1.0})
    return out


@pytest.fixture
def run(tmp_path):
    rows = [("niah_single_1", "string_match_all", n, v) for n, v in ((1024, 100.0), (2048, 75.0), (4096, 40.0))]
    rows += [("piqa", "acc", None, 71.0), ("boolq", "acc", None, 61.0)]
    return make_run(tmp_path / "run", rows=rows, samples={"niah_single_1": depth_samples()})


def assert_labelled(fig):
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert axes
    for ax in axes:
        spec = ax.get_subplotspec()
        if spec.is_first_col():
            assert ax.get_ylabel().strip(), ax.get_title()
        if spec.is_last_row():
            assert ax.get_xlabel().strip(), ax.get_title()
        assert ax.get_title().strip()
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert all(ax.get_ylabel() for ax in colorbars)


def assert_written(paths):
    png, pdf = paths
    assert png.suffix == ".png" and png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert pdf.suffix == ".pdf" and pdf.read_bytes()[:4] == b"%PDF" and pdf.stat().st_size > 5_000


def test_niah_length_draws_runs_solid_and_baselines_dashed(run, tmp_path):
    fig = plots.niah_length(results.load(run))
    assert_labelled(fig)
    assert len(fig.axes) == 4  # the run's family only: one row, four tasks
    lines = {ln.get_label(): ln for ax in fig.axes[:1] for ln in ax.get_lines()}
    legend = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert "my-gdn2 (run)" in legend and "Gated DeltaNet-2 (reported)" in legend
    styles = {ln.get_linestyle() for ax in fig.axes[:1] for ln in ax.get_lines()}
    assert styles == {"-", "--"} and lines
    assert_written(plots.save(fig, tmp_path / "niah.png"))
    both = plots.niah_length(results.load())  # no runs: both families
    assert len(both.axes) == 8


def test_niah_depth_heatmap_from_per_sample_logs(run, tmp_path):
    samples = results.niah_samples(run)
    assert set(samples["context_length"]) == {1024, 2048}  # 4K lines have no depth
    assert samples.groupby("context_length")["score"].mean().to_dict() == {1024: 100.0, 2048: 50.0}
    fig = plots.niah_depth(samples, bins=10)
    assert_labelled(fig)
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (10, 2)
    assert image[0, 1] == 100.0 and image[-1, 1] == 0.0 and (image[:, 0] == 100.0).all()
    assert_written(plots.save(fig, tmp_path / "depth"))


def test_commonsense_and_throughput(run, tmp_path):
    fig = plots.commonsense(results.load(run))
    assert_labelled(fig)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "Avg."
    assert_written(plots.save(fig, tmp_path / "cs"))

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "model.json").write_text((REPO / "results" / "bench" / "model_h100.json").read_text())
    (bench / "kernels.json").write_text(json.dumps([{"shape": "1x4096", "ours_ms": 1.0}]))  # other format: skipped
    (bench / "broken.json").write_text("{")
    records = plots.bench_records([bench])
    assert set(records["kind"]) == {"prefill", "decode"} and set(records["model"]) == {"gdn2_1.3B", "swa_gdn2_1.3B"}
    fig = plots.throughput(records, results.read_paper()["figure2"])
    assert_labelled(fig)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("paper Fig. 2" in x for x in labels) and any("prefill" in x for x in labels)
    assert_written(plots.save(fig, tmp_path / "tp"))


def test_a_run_keeps_its_colour_across_figures(run):
    df = results.load(run)
    colour = {}
    for fig in (plots.niah_length(df), plots.commonsense(df)):
        legend = fig.axes[-1].get_legend() or fig.axes[0].get_legend()
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            colour.setdefault(text.get_text(), set()).add(handle.get_color())
    assert len(colour["my-gdn2 (run)"]) == 1 and len(colour["Gated DeltaNet-2 (reported)"]) == 1


@pytest.mark.parametrize("kind", plots.KINDS)
def test_plot_command_writes_png_and_pdf(run, tmp_path, kind):
    out = tmp_path / "fig" / kind
    res = CliRunner().invoke(app, ["plot", str(run), "--kind", kind, "--out", str(out),
                                   "--bench", str(REPO / "results" / "bench")])
    assert res.exit_code == 0, res.output
    assert_written([out.with_suffix(".png"), out.with_suffix(".pdf")])
