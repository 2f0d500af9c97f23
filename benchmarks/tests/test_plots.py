"""benchmarks.harness.plots: every figure renders from the committed results JSON, and
bench_select.py --replot rebuilds its report and figure from a results file alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import plots
from benchmarks.harness.tables import lds_row_name

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "benchmarks"
pytest.importorskip("matplotlib")


def load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def test_query_and_projection_plots(tmp_path):
    q = load("bench_query.json")
    plots.query_plot(q, tmp_path / "q.png")            # as committed (old or new machine keys)
    machine = dict(q["machine"])
    machine["cpu_model"] = machine.pop("cpu", machine.get("cpu_model"))
    plots.query_plot({**q, "machine": machine}, tmp_path / "q2.png")
    p = load("bench_projection.json")
    ks = [int(k) for k in p["args"]["ks"].split(",")]
    fid_ks = [int(k) for k in p["args"]["fid_ks"].split(",")]
    plots.projection_plot(tmp_path / "sub" / "p.png", p["fidelity"], p["speed"], fid_ks, ks)
    plots.projection_plot(tmp_path / "f.png", p["fidelity"], [], fid_ks, ks)
    # the figure sizes and dpi the plot functions set, in pixels, and not a blank canvas
    # 16 × 4.8 inches at 110 dpi
    assert _pixels(tmp_path / "q.png") == _pixels(tmp_path / "q2.png") == (528, 1760)
    for name in ("sub/p.png", "f.png"):
        assert _pixels(tmp_path / name)[1] > _pixels(tmp_path / name)[0]


def _pixels(path) -> tuple[int, int]:
    """(height, width) of a PNG whose pixels are not all one colour."""
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img[..., :3].std() > 0.01, path
    return img.shape[:2]


def test_lds_plot(tmp_path):
    d = load("bench_lds.json")
    rows = [dict(r, subset_sums=[s["sum_if"][lds_row_name(r)] for s in d["subsets"]])
            for r in d["lds"]]
    losses = np.array([s["val_loss"] for s in d["subsets"]])
    repeats = {s["index"]: s["val_loss_other_seeds"] for s in d["subsets"]
               if s["val_loss_other_seeds"]}
    plots.lds_plot(tmp_path / "lds.png", rows, np.array(rows[0]["subset_sums"]), losses,
                   np.array([s["n_flipped"] for s in d["subsets"]]), repeats, rows[0],
                   d["noise_floor"], "title")
    assert (tmp_path / "lds.png").stat().st_size > 10_000


def test_bench_select_replot(tmp_path):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_select",
                           "--replot", str(DOCS / "bench_select_bigbench.json"), "--json",
                           str(out), "--png", str(png)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 10_000 and json.loads(out.read_text())["reaggregated"]
    assert "| θ + tif |" in proc.stdout and f"wrote {out} and {png}" in proc.stdout
