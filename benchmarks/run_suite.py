"""The evidence suite (``make bench``, ``make bench-quick``, ``make bench-more``): does gradproj's
selection help on real human preference data at 135M, do its scores find flipped pairs, and how
do IRM and LossDiff relate to influence? On the embedded SmolLM2-135M-Instruct and the HH-RLHF
pairs the repository ships (benchmarks/data/hh-rlhf, MIT). No step downloads anything.

``make bench`` (set ``main``) runs, side by side (one torch thread each: on 2 cores two
single-threaded runs finish sooner than one after the other at two threads):

1. ``bench_hh.py --flip 0``    — HH-RLHF as published: learnability, 5 seeds × 5 rules, IRM–IF.
2. ``bench_hh.py --flip 0.25`` — the same with 25 % of the training pairs swapped: noise AUROC.

``make bench-more`` (set ``more``): training dynamics, projection fidelity and the LDS on the
generated task; the BIG-bench steps of earlier runs need its 1.0.0 archive, which the package
index no longer serves: ``--archive PATH`` adds them (``bigbench`` set).

Every step writes its JSON (and PNG) into ``--out`` (default docs/benchmarks/); then the pages
are regenerated from the JSON there (benchmarks/pages.py). ``--quick``: small sizes into
runs/bench-quick/. A failed step is reported and the others go on; exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import common as C

# Sizes (measured on the 2-core CPU, two single-threaded runs side by side: a training pair
# ~1.9 s, a held-out pass ~0.5 s a pair): 64 train / 16 val / 200 test pairs, 5 seeds; the
# as-published run continues on 5 rules, the flipped one on 3 (its question is noise detection,
# answered by the scores); about 100 min for both, the as-published run being the longer.
HH_FULL = ["--n-train", "64", "--n-val", "16", "--n-test", "200", "--seeds", "0", "1", "2", "3",
           "4", "--lr", "1e-3"]
HH_FLIP_RULES = ["--rules", "all", "random", "lossdiff-irm"]
HH_QUICK = ["--quick", "--n-train", "24", "--n-val", "8", "--n-test", "32", "--proj-dim", "512",
            "--lr", "1e-3", "--rules", "all", "random", "lossdiff-irm"]


def steps(out: Path, quick: bool, archive: Path | None) -> dict[str, list[tuple[str, list[str]]]]:
    """Set → groups of (name, argv); the steps of a group run side by side."""
    q = ["--quick"] if quick else []
    hh = HH_QUICK if quick else HH_FULL

    def io(name, png=True):
        return ["--json", str(out / f"{name}.json"), *(["--png", str(out / f"{name}.png")]
                                                        if png else [])]

    main = [("HH-RLHF as published", ["bench_hh.py", *hh, "--flip", "0", "--threads", "1",
                                      "--work", "/tmp/gradproj-suite-hh-clean",
                                      *io("bench_hh_clean", False)]),
            ("HH-RLHF, 25% flipped", ["bench_hh.py", *hh, *([] if quick else HH_FLIP_RULES),
                                      "--flip", "0.25", "--threads", "1",
                                      "--work", "/tmp/gradproj-suite-hh-flips",
                                      *io("bench_hh_flips", False)])]
    more = [[("training dynamics of all", ["bench_dynamics.py", *(
                ["--n-train", "32", "--n-test", "16", "--seeds", "0"] if quick else []),
                *io("bench_dynamics")])],
            [("projection fidelity", ["bench_projection.py", "--skip-speed", *q,
                                      *io("bench_fidelity")])],
            [("linear datamodeling score", ["bench_lds.py", *q, *io("bench_lds")])]]
    sets = {"main": [main], "more": more, "bigbench": []}
    if archive is not None:
        sets["bigbench"] = [[("BIG-bench pairs", ["bigbench_pairs.py", "--archive", str(archive)])],
                            [("BIG-bench learnability", ["bench_learnability.py", *q, "--json",
                                                         str(out / "bench_learnability.json")])]]
    return sets


def run_group(group: list[tuple[str, list[str]]]) -> list[dict]:
    """Start every step of ``group``, wait for all; one record per step."""
    procs = []
    for name, argv in group:
        C.log(f"== {name}: {' '.join(argv)}")
        procs.append((name, argv, time.perf_counter(), subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{Path(argv[0]).stem}", *argv[1:]], cwd=C.ROOT)))
    runs = []
    for name, argv, t, proc in procs:
        rc = proc.wait()
        seconds = time.perf_counter() - t
        C.log(f"== {name}: rc {rc}, {seconds / 60:.1f} min")
        runs.append({"step": name, "argv": argv, "rc": rc, "seconds": seconds})
    return runs


def merge_runs(saved: list[dict], runs: list[dict], info: dict) -> list[dict]:
    """Every step's last run: ``saved`` with the steps in ``runs`` (stamped with ``info``, the
    machine, commit and date) replaced in place, new steps appended."""
    now = {r["step"]: dict(r, machine=info) for r in runs}
    return [now.pop(r["step"], r) for r in saved] + list(now.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 15 min), into "
                    "runs/bench-quick/")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for JSON, PNG and pages (default docs/benchmarks/, or "
                         "runs/bench-quick/ with --quick)")
    ap.add_argument("--set", choices=("main", "more", "bigbench"), default="main")
    ap.add_argument("--archive", type=Path, default=None,
                    help="bigbench-1.0.0.tar.gz for the bigbench set")
    args = ap.parse_args(argv)
    out = args.out or (C.ROOT / ("runs/bench-quick" if args.quick else "docs/benchmarks"))
    out.mkdir(parents=True, exist_ok=True)
    info = C.machine_info()
    t = time.perf_counter()
    runs = [r for group in steps(out, args.quick, args.archive)[args.set]
            for r in run_group(group)]
    wall = time.perf_counter() - t
    record = out / "suite.json"       # every step's last run
    saved = json.loads(record.read_text()) if record.is_file() else {"runs": []}
    C.write_json(record, {"machine": info, "runs": merge_runs(saved["runs"], runs, info),
                          "last": {"set": args.set, "quick": args.quick, "seconds": wall,
                                   "commit": info["commit"], "date": info["date"]}})
    from benchmarks.pages import write_pages

    pages = write_pages(out)
    C.log(f"suite: {wall / 60:.1f} min wall; {len(pages)} pages in {out}")
    for r in runs:
        print(f"  {r['step']:<40s} rc {r['rc']}  {r['seconds'] / 60:6.1f} min")
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
