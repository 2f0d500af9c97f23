"""The evidence suite's report (benchmarks/run_suite.py): one section per benchmark, rendered
from the JSON it wrote (tables from :mod:`benchmarks.harness.tables` and ``.noise``), into
``results_evidence.md``; and the copy of its sections between the BEGIN/END markers of
docs/results.md (the hand-written reading above them is not touched).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.harness.measure import machine_line
from benchmarks.harness.tables import present_rules, replace_between, select_report


def section(title: str, paths: list[Path], render) -> list[str]:
    """The first of ``paths`` that exists, rendered (bench_projection.json, written by a full
    bench_projection run with --data bigbench, holds the same fidelity table)."""
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        return [f"## {title}", "", f"(no results: {paths[0].name} was not written)", ""]
    res = json.loads(path.read_text())
    machine = res.get("machine") or {}
    when = f"Source: `{path.name}`, commit {machine.get('commit')}, {machine.get('date')}."
    png = path.with_suffix(".png")
    return [f"## {title}", "", when, "", *render(res), "",
            *([f"![{path.stem}]({png.name})", ""] if png.is_file() else [])]


def render_fidelity(res: dict) -> list[str]:
    info = res.get("fidelity_info", {})
    return [f"{info.get('n_train')} train and {info.get('n_val')} validation pairs "
            f"({info.get('data')}), exact per-pair gradients over the LoRA weights at a "
            f"perturbed fresh adapter; projection seeds {info.get('seeds')} (mean ± std). "
            "Score = inner product with the mean validation gradient.", "",
            res.get("markdown_fidelity", "")]


def render_lds(res: dict) -> list[str]:
    s, a, nf = res.get("settings", {}), res.get("args", {}), res.get("noise_floor", {})
    head = (f"Tiny Llama (P = {s.get('P', '?')}), {a.get('train_pairs', '?')} train pairs "
            f"({a.get('flip', 0):.0%} flipped), {a.get('val_pairs', '?')} validation pairs, "
            f"{nf.get('n_subsets', '?')} random half-subsets, each retrained from θ; LDS = "
            "Spearman(Σ_subset IF, −validation loss). Noise ceiling from retraining the same "
            f"subsets with other data-order seeds: {nf.get('ceiling', float('nan')):.2f}.")
    return [head, "", res.get("table", "(no table in the JSON)")]


def render_select(res: dict) -> list[str]:
    lines = [f"{res['data']}: {res['task']['n_train']} train pairs ({res['task']['n_flipped']} "
             f"flipped), {res['task']['n_val']} val, {res['task']['n_val2']} second val, "
             f"{res['task']['n_test']} test; keep {res['settings']['keep']}; seeds "
             f"{res['settings']['seeds']}.", ""]
    if res.get("learnability"):
        from benchmarks.harness.learnability import markdown

        lines += ["Learnability of each pooled source (base vs warm-up θ on its held-out pairs):",
                  "", markdown(res["learnability"]), ""]
    return lines + select_report(res, present_rules(res))


def render_learnability(res: dict) -> list[str]:
    from benchmarks.harness.learnability import markdown

    return [markdown(res["rows"])]


def render_dynamics(res: dict) -> list[str]:
    from benchmarks.harness.dynamics import markdown

    return [f"{res['source']}: {res['n_train']} training pairs ({res['n_flipped']} flipped), "
            f"{res['n_test']} held-out; one more epoch from θ on every pair, per seed.", "",
            markdown(res["runs"], set(res.get("flipped", [])) or None)]


SELECT_SECTIONS = (
    ("Learnable sources (pooled): label noise, downstream alignment", "bench_evidence_learnable"),
    ("Control (at chance after warm-up): label noise, downstream alignment",
     "bench_evidence_control"),
    ("Learnable sources, larger run: 300 pairs at every noise rate, 120 held-out (130 min, "
     "outside make bench)", "bench_evidence_learnable_long"),
    ("Earlier control: the suite's former seven BIG-bench tasks (at chance after warm-up)",
     "bench_select_bigbench"))

REQUIRED = ("bench_evidence_learnable", "bench_evidence_control")
"""The sections make bench writes (a missing one says so); the others appear when present."""


def write_report(out: Path, runs: list[dict], quick: bool, info: dict) -> Path:
    path = out / "results_evidence.md"
    lines = ["# Evidence suite (benchmarks/run_suite.py)" + (" — quick" if quick else ""), ""]
    if runs:
        def when(r):
            m = r.get("machine") or info
            return f"`{m.get('commit')}`, {str(m.get('date', ''))[:16]}"

        lines += [f"Machine: {machine_line(info)}. Each step's last run:", "",
                  "| step | exit | minutes | commit, date |", "|---|---:|---:|---|",
                  *[f"| {r['step']} | {r['rc']} | {r['seconds'] / 60:.1f} | {when(r)} |"
                    for r in runs], ""]
    else:
        lines += ["Assembled from the JSON files below, not from one suite run: each section "
                  "names the commit and date of its source. `make bench` replaces it.", ""]
    for title, name in SELECT_SECTIONS:
        if name in REQUIRED or (out / f"{name}.json").is_file():
            lines += section(title, [out / f"{name}.json"], render_select)
    lines += section("Learnability of every candidate source", [out / "bench_learnability.json"],
                     render_learnability)
    lines += section("Training dynamics of `all`", [out / "bench_dynamics.json"],
                     render_dynamics)
    lines += section("Projection fidelity", [out / "bench_fidelity.json",
                                             out / "bench_projection.json"], render_fidelity)
    lines += section("Linear datamodeling score", [out / "bench_lds.json"], render_lds)
    path.write_text("\n".join(lines) + "\n")
    return path


BEGIN = ("<!-- evidence suite: begin — written by benchmarks/run_suite.py from "
         "docs/results_evidence.md; edit the script, not this block -->")
END = "<!-- evidence suite: end -->"


def splice(results_md: Path, report: Path) -> bool:
    """Copy the report's sections (headings one level down) between the BEGIN/END markers of
    ``results_md``, so docs/results.md holds the same tables as the last full run. False (and
    nothing written) when the markers are missing."""
    body = report.read_text().splitlines()[1:]            # without the report's own title
    body = ["#" + line if line.startswith("#") else line for line in body]
    return replace_between(results_md, BEGIN, END, "\n".join(body))
