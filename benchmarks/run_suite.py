"""The evidence suite (``make bench``, ``make bench-quick``, ``make bench-more``): does gradproj's
selection help on real human preference data at 135M, do its scores find flipped pairs, and how
do IRM and LossDiff relate to influence? On the embedded SmolLM2-135M-Instruct and the HH-RLHF
pairs the repository ships (benchmarks/data/hh-rlhf, MIT). No step downloads anything.

``make bench`` (set ``main``) runs ``bench_hh.py`` in two settings, 5 seeds each:

- as published — learnability (base vs warm-up θ), 5 rules continued from θ, IRM against IF;
- with 25 % of the training pairs swapped — noise AUROC per score, 2 rules continued.

The seeds are dealt to two lanes that run side by side, one torch thread each (on 2 cores two
single-threaded runs finish no later than one after the other at two threads, measured), and
each setting's parts are joined at the end (``bench_hh.py --merge``).

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

# Sizes (measured on the 2-core CPU with two single-threaded runs side by side, max length 96:
# a training pair ~1.5 s, a held-out pass over the 200 test pairs ~90 s). Five seeds of the
# as-published data continued on 5 rules (θ evaluated at every seed: learnability), five of the
# flipped data on 2 rules (its question is noise detection, answered by the scores; θ evaluated
# at the first seed). The seeds are dealt to two lanes of equal work that run side by side, and
# the parts of each setting are joined at the end (bench_hh --merge).
HH = ["--n-train", "48", "--n-val", "16", "--n-test", "200", "--max-length", "96",
      "--lr", "1e-3", "--threads", "1"]
HH_QUICK = ["--quick", "--n-train", "24", "--n-val", "8", "--n-test", "32", "--proj-dim", "512",
            "--max-length", "96", "--lr", "1e-3", "--threads", "1"]
SETTINGS = {"clean": ["--flip", "0"], "flips": ["--flip", "0.25", "--eval-theta", "first"]}
RULES = {"clean": ["all", "random", "tif", "lossdiff-irm", "reward-gap"],
         "flips": ["all", "lossdiff-irm"]}
QUICK_RULES = ["all", "random", "lossdiff-irm"]
LANES = ((("clean", (0, 1, 2)), ("flips", (3, 4))), (("flips", (0, 1, 2)), ("clean", (3, 4))))
QUICK_LANES = ((("clean", (0, 1)),), (("flips", (0, 1)),))


def hh_steps(out: Path, quick: bool) -> tuple[list, list]:
    """The lanes of the HH steps (each a list of steps run in turn; lanes side by side) and
    the merge steps that join each setting's parts into ``out/bench_hh_<setting>.json``."""
    parts = C.ROOT / "runs" / ("bench-parts-quick" if quick else "bench-parts")  # not kept
    lanes, pieces = [], {"clean": [], "flips": []}
    for lane in (QUICK_LANES if quick else LANES):
        steps = []
        for setting, seeds in lane:
            name = f"bench_hh_{setting}.seeds-{'-'.join(map(str, seeds))}"
            pieces[setting].append(str(parts / f"{name}.json"))
            argv = ["bench_hh.py", *(HH_QUICK if quick else HH), *SETTINGS[setting],
                    "--rules", *(QUICK_RULES if quick else RULES[setting]),
                    "--seeds", *map(str, seeds),
                    "--work", f"/tmp/gradproj-suite-{name}", "--json", pieces[setting][-1]]
            steps.append((f"HH-RLHF {setting}, seeds {', '.join(map(str, seeds))}", argv))
        lanes.append(steps)
    merges = [[(f"HH-RLHF {setting}: join the parts",
                ["bench_hh.py", "--merge", *files, "--json", str(out / f"bench_hh_{setting}.json")])]
              for setting, files in pieces.items()]
    return lanes, merges


def steps(out: Path, quick: bool, archive: Path | None) -> dict[str, list]:
    """Set → stages; a stage is a list of lanes run side by side, a lane a list of
    (name, argv) run in turn."""
    q = ["--quick"] if quick else []

    def io(name):
        return ["--json", str(out / f"{name}.json"), "--png", str(out / f"{name}.png")]

    lanes, merges = hh_steps(out, quick)
    more = [[[("training dynamics of all", ["bench_dynamics.py", *(
                ["--n-train", "32", "--n-test", "16", "--seeds", "0"] if quick else []),
                *io("bench_dynamics")])]],
            [[("projection fidelity", ["bench_projection.py", "--skip-speed", *q,
                                       *io("bench_fidelity")])]],
            [[("linear datamodeling score", ["bench_lds.py", *q, *io("bench_lds")])]]]
    sets = {"main": [lanes, merges], "more": more, "bigbench": []}
    if archive is not None:
        sets["bigbench"] = [[[("BIG-bench pairs", ["bigbench_pairs.py", "--archive",
                                                    str(archive)])]],
                            [[("BIG-bench learnability", ["bench_learnability.py", *q, "--json",
                                                          str(out / "bench_learnability.json")])]]]
    return sets


def run_lane(lane: list[tuple[str, list[str]]]) -> list[dict]:
    """The steps of one lane in turn (a failed step does not stop the lane)."""
    runs = []
    for name, argv in lane:
        C.log(f"== {name}: {' '.join(argv)}")
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", f"benchmarks.{Path(argv[0]).stem}",
                             *argv[1:]], cwd=C.ROOT).returncode
        seconds = time.perf_counter() - t
        C.log(f"== {name}: rc {rc}, {seconds / 60:.1f} min")
        runs.append({"step": name, "argv": argv, "rc": rc, "seconds": seconds})
    return runs


def run_stage(lanes: list[list[tuple[str, list[str]]]]) -> list[dict]:
    """Every lane of a stage side by side (threads waiting on subprocesses)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(len(lanes), 1)) as pool:
        return [r for runs in pool.map(run_lane, lanes) for r in runs]


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
    runs = [r for stage in steps(out, args.quick, args.archive)[args.set]
            for r in run_stage(stage)]
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
