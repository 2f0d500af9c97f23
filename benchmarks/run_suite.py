"""The evidence suite (``make bench``, ``make bench-quick``): does gradproj's influence track
reality, and does its selection help? On the embedded SmolLM2-135M-Instruct and BIG-bench pairs.

Steps, each a script that also runs alone:

1. ``bigbench_pairs.py``   — BIG-bench multiple-choice tasks → preference pairs (cached outside
   the repository; the 358 MB source archive is fetched once with pip).
2. ``bench_projection.py --skip-speed --data bigbench`` — projection fidelity: Spearman and
   Pearson of store IF against IF from exact unprojected gradients, k = 512 … 8192, every kind.
3. ``bench_lds.py``        — linear datamodeling score on a tiny model (retraining is cheap).
4. ``bench_select.py --data bigbench`` — label-noise detection at 10/25/40 % flips (AUROC of
   IF, LossDiff, IRM and of each rule's keep decision), downstream DPO from θ on each rule's
   selection (3 seeds), stage costs and the cost of answering a second validation set.

Full run: JSON and PNG into docs/, the tables into docs/results_evidence.md and, between its
BEGIN/END markers, into docs/results.md (the hand-written reading above them is not touched;
the report: gradproj.experiments.suite).
``--quick``: small sizes, into runs/bench-quick/ (docs/ is left alone). A failed step is
reported and the suite goes on; the exit code is 1 if any step failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from gradproj.experiments.suite import splice, write_report  # noqa: E402

HERE = Path(__file__).resolve().parent

# bench_select on BIG-bench: sizes of the full run (the quick run uses bench_select --quick
# with five rules and one extra noise rate). Two torch threads: the suite expects the machine
# to itself (bench_select's default of one thread is for a shared, oversubscribed machine).
# Size: the suite must finish in under 2 hours on the 2-core CPU. Measured in the full run at
# 128 training pairs (commit dbf73d5, docs/suite.json): fidelity 13.4 min, LDS 5.0 min, and in
# this step ≈ 3.9 s per training pair and noise rate (θ, scores, store) + 1.5 min (θ_V, IF),
# ≈ 1.7 s per kept pair in each of the 21 continued trainings, 37 s per evaluation on 96 test
# pairs: this step took 102.0 min and the suite 120.4 min. At 96 pairs: an estimated ~83 min
# for this step, ~101 min for the suite; with the reward-gap rule (24 continued trainings, 8
# rules × 3 seeds) ~7 min more: ~108 min, not yet confirmed by a full run.
SELECT_FULL = ["--n-train", "96", "--n-val", "32", "--n-test", "96", "--max-length", "128",
               "--threads", "2"]
SELECT_QUICK = ["--quick", "--noise", "0.40", "--max-length", "128", "--threads", "2",
                "--rules", "all", "random", "tif", "lossdiff", "lossdiff-irm"]


def steps(out: Path, quick: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, argv, JSON written or None) of every step."""
    q = ["--quick"] if quick else []

    def io(name):
        return ["--json", str(out / f"{name}.json"), "--png", str(out / f"{name}.png")]

    return [
        ("BIG-bench pairs", ["bigbench_pairs.py"], None),
        ("projection fidelity", ["bench_projection.py", "--skip-speed", "--data", "bigbench",
                                 "--max-length", "128", *q, *io("bench_fidelity")],
         "bench_fidelity"),
        ("linear datamodeling score", ["bench_lds.py", *q, *io("bench_lds")], "bench_lds"),
        ("selection, label noise, downstream, cost",
         ["bench_select.py", "--data", "bigbench", *(SELECT_QUICK if quick else SELECT_FULL),
          "--work", f"/tmp/gradproj-bench-suite-select{'-quick' if quick else ''}",
          *io("bench_select_bigbench")],
         "bench_select_bigbench"),
    ]


def run_step(name: str, argv: list[str]) -> dict:
    C.log(f"== {name}: {' '.join(argv)}")
    t = time.perf_counter()
    rc = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], cwd=C.ROOT).returncode
    seconds = time.perf_counter() - t
    C.log(f"== {name}: rc {rc}, {seconds / 60:.1f} min")
    return {"step": name, "argv": argv, "rc": rc, "seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 15 min), into "
                    "runs/bench-quick/")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for JSON, PNG and the report (default docs/, or "
                         "runs/bench-quick/ with --quick)")
    ap.add_argument("--only", default=None,
                    help="comma-separated step numbers to run (1-4; 0: none, only rewrite the "
                         "report); the report uses whatever JSON is in --out")
    args = ap.parse_args(argv)
    out = args.out or (C.ROOT / ("runs/bench-quick" if args.quick else "docs"))
    out.mkdir(parents=True, exist_ok=True)
    info = C.machine_info()
    todo = steps(out, args.quick)
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        todo = [s for i, s in enumerate(todo, 1) if i in keep]
    runs = [run_step(name, argv) for name, argv, _ in todo]
    record = out / "suite.json"       # the last run's steps, kept for a report-only rerun
    if runs:
        C.write_json(record, {"machine": info, "runs": runs, "quick": args.quick})
    elif record.is_file():
        saved = json.loads(record.read_text())
        info, runs = saved["machine"], saved["runs"]
    report = write_report(out, runs, args.quick, info)
    results_md = out / "results.md"
    if not args.quick and results_md.is_file():
        if splice(results_md, report):
            C.log(f"suite: tables copied into {results_md}")
        else:
            C.log(f"suite: {results_md} has no evidence-suite markers; tables left in {report}")
    C.log(f"suite: {sum(r['seconds'] for r in runs) / 60:.1f} min; report {report}")
    for r in runs:
        print(f"  {r['step']:<45s} rc {r['rc']}  {r['seconds'] / 60:6.1f} min")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
