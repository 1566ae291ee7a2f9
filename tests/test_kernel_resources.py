"""The offline resource report (`python -m gdn2_eval.bench.resources`): our prefill kernels compiled for sm_90
without a GPU, and the launch default it justifies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


def test_default_intra_launch_spills_less_than_four_warps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled, not interpreted
    out = tmp_path / "res.json"
    variants = '[{}, {"intra_warps": 4}, {"intra_maxnreg": 128}]'
    res = subprocess.run([sys.executable, "-m", "gdn2_eval.bench.resources", "--variants", variants,
                          "--out", str(out)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    capped = [row for row in rows if row["kernel"] == "intra" and row["variant"] == {"intra_maxnreg": 128}]
    assert len(capped) == 1 and capped[0]["registers"] <= 128  # the cap reaches the compiler
    intra = {row["num_warps"]: row for row in rows if row["kernel"] == "intra" and row not in capped}
    assert set(intra) == {8, 4}  # the default launch is 8 warps
    assert all(0 < row["registers"] <= 255 and row["matrix_instructions"] > 0 for row in rows)
    assert intra[8]["stack_bytes"] < intra[4]["stack_bytes"]
    assert {row["kernel"] for row in rows} == {"intra", "sweep"}
    assert "sweep" in res.stdout and "regs" in res.stdout


def test_refuses_to_run_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-m", "gdn2_eval.bench.resources"], env=env, capture_output=True,
                         text=True)
    assert res.returncode != 0 and "unset TRITON_INTERPRET" in res.stderr
