"""One page per benchmark, generated from its JSON: ``python -m benchmarks.pages`` rewrites
``docs/benchmarks/<name>.md`` for every ``<name>.json`` there (and the folder's README.md, the
list of pages). Tables come from the JSON through the same functions the benchmarks print with;
nothing on a page is copied by hand, so a rerun of a benchmark and this command keep them true.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import common as C

FOLDER = C.ROOT / "docs" / "benchmarks"


def _hh(res: dict) -> list[str]:
    from benchmarks.harness.hh import report

    return report(res)


def _select(res: dict) -> list[str]:
    from benchmarks.harness.suite import render_select

    return render_select(res)


def _learnability(res: dict) -> list[str]:
    from benchmarks.harness.learnability import markdown

    return [markdown(res["rows"])]


def _dynamics(res: dict) -> list[str]:
    from benchmarks.harness.suite import render_dynamics

    return render_dynamics(res)


def _projection(res: dict) -> list[str]:
    from benchmarks.harness.suite import render_fidelity

    speed = res.get("markdown_speed")
    return [*render_fidelity(res), *(["", "Projection speed:", "", speed] if speed else [])]


def _lds(res: dict) -> list[str]:
    from benchmarks.harness.suite import render_lds

    return render_lds(res)


def _markdown_field(res: dict) -> list[str]:
    return [res["markdown"]]


def _query(res: dict) -> list[str]:
    from benchmarks.bench_query import M, SHARD_ROWS
    from benchmarks.harness.tables import query_cost_table

    return [query_cost_table(res, res.get("M", M), res.get("shard_rows", SHARD_ROWS))]


def _scale(res: dict, path: Path) -> list[str]:
    from benchmarks.harness.scale import report

    return [report(path, machine, path.with_suffix(".png").name)
            for machine in sorted(res.get("runs", {}))][:1]


def _noise_diagnosis(res: dict) -> list[str]:
    from benchmarks.harness.noise import norm_diagnosis_lines

    return [f"Flip rate {res['flip']:.0%}.", "", *norm_diagnosis_lines(res["per_task"])]


def _gpu(res: dict) -> list[str]:
    cols = ("part", "what", "value", "note")
    return [f"Device: {res.get('environment', {}).get('device', '?')}; all checks ok: "
            f"{res.get('ok')}; {res.get('seconds', 0):.0f} s.", "",
            C.markdown_table(cols, [[r.get(c, "") for c in cols] for r in res["rows"]])]


def _suite(res: dict) -> list[str]:
    rows = [[r["step"], r["rc"], f"{r['seconds'] / 60:.1f}",
             f"`{(r.get('machine') or {}).get('commit')}`, {(r.get('machine') or {}).get('date')}"]
            for r in res["runs"]]
    last = res.get("last", {})
    head = (f"Last run: set `{last.get('set')}`{' (quick)' if last.get('quick') else ''}, "
            f"{last.get('seconds', 0) / 60:.1f} min wall, commit `{last.get('commit')}`, "
            f"{last.get('date')}." if last else "")
    return [head, "", C.markdown_table(["step", "exit", "minutes", "commit, date"], rows)]


PAGES: list[tuple[str, str, str, Callable]] = [
    # (JSON stem prefix, title, the command that writes the JSON, renderer); a key before any
    # key it starts with
    ("bench_hh_clean", "HH-RLHF as published: selection rules, learnability, IRM vs IF",
     "make bench (python -m benchmarks.run_suite)", _hh),
    ("bench_hh_flips", "HH-RLHF with 25% of the training pairs flipped: label noise",
     "make bench (python -m benchmarks.run_suite)", _hh),
    ("bench_hh", "HH-RLHF", "python -m benchmarks.bench_hh", _hh),
    ("bench_evidence_", "BIG-bench pairs (earlier evidence suite)",
     "python -m benchmarks.bench_select --data bigbench", _select),
    ("bench_select", "Selection rules (bench_select)", "python -m benchmarks.bench_select",
     _select),
    ("bench_learnability", "Learnability of BIG-bench sources",
     "python -m benchmarks.bench_learnability", _learnability),
    ("bench_dynamics", "Training dynamics of `all`", "python -m benchmarks.bench_dynamics",
     _dynamics),
    ("bench_fidelity", "Projection fidelity",
     "python -m benchmarks.bench_projection --skip-speed", _projection),
    ("bench_projection", "Projection speed and fidelity", "python -m benchmarks.bench_projection",
     _projection),
    ("bench_lds", "Linear datamodeling score", "python -m benchmarks.bench_lds", _lds),
    ("bench_build", "Store build cost", "python -m benchmarks.bench_build", _markdown_field),
    ("bench_query", "Influence query cost", "python -m benchmarks.bench_query", _query),
    ("bench_scale", "Memory and time at 1–8B (plan against measured)",
     "python -m benchmarks.bench_scale", _scale),
    ("diagnose_noise", "Label noise: gradient-norm diagnosis",
     "python -m benchmarks.diagnose_noise", _noise_diagnosis),
    ("gpu_check", "GPU check", "bash benchmarks/gpu_check.sh", _gpu),
    ("suite", "Evidence suite: the last run of each step", "python -m benchmarks.run_suite",
     _suite),
]


def page_of(stem: str):
    """(title, command, renderer) of a JSON stem: the first entry of :data:`PAGES` it starts
    with (the list puts the longer keys first, e.g. bench_lds_smollm2 → bench_lds), or None."""
    for key, title, command, render in PAGES:
        if stem.startswith(key):
            return title, command, render
    return None


def render_page(path: Path) -> str:
    title, command, render = page_of(path.stem)
    res = json.loads(path.read_text())
    machine = res.get("machine") or {}
    lines = [f"# {title}", "",
             f"Generated by `python -m benchmarks.pages` from [`{path.name}`]({path.name}) "
             f"(written by `{command}`); commit `{machine.get('commit', '?')}`, "
             f"{machine.get('date', '?')}.", ""]
    if machine.get("cpu_model"):
        from benchmarks.harness.measure import machine_line

        lines += [f"Machine: {machine_line(machine)}.", ""]
    body = render(res, path) if render is _scale else render(res)
    lines += [*body, ""]
    png = path.with_suffix(".png")
    if png.is_file():
        lines += [f"![{path.stem}]({png.name})", ""]
    return "\n".join(lines)


def write_pages(folder: Path = FOLDER) -> list[Path]:
    """Every page of ``folder`` from its JSON, and README.md listing them."""
    from gradproj.core.atomic import write_atomic

    written = []
    for path in sorted(folder.glob("*.json")):
        if page_of(path.stem) is None:
            continue
        page = path.with_suffix(".md")
        write_atomic(page, render_page(path))
        written.append(page)
    index = ["# Benchmark pages", "",
             "One page per result file, generated from the JSON beside it by "
             "`python -m benchmarks.pages` (do not edit the pages; rerun the benchmark, or "
             "this command). The reading is in [../results.md](../results.md).", ""]
    index += [f"- [{page_of(p.stem)[0]}]({p.name}) — `{p.stem}.json`" for p in written]
    write_atomic(folder / "README.md", "\n".join(index) + "\n")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, default=FOLDER)
    args = ap.parse_args(argv)
    for page in write_pages(args.folder):
        print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
