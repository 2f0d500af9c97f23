"""Command line of :mod:`benchmarks.harness.bigbench`: BIG-bench multiple-choice tasks →
preference pairs (train/val/test jsonl + meta.json, cached; see that module for the format).

    .venv/bin/python -m benchmarks.bigbench_pairs                       # default tasks, seed 0
    .venv/bin/python -m benchmarks.bigbench_pairs --tasks navigate,ruin_names --max-train 300 \\
        --seed 1 --out /tmp/bb
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


from benchmarks.harness.bigbench import (  # noqa: E402
    ARCHIVE_NAME,
    DEFAULT_TASKS,
    SPLITS,
    BigbenchError,
    PairSettings,
    prepare,
)


def table(meta: Mapping) -> str:
    """Pairs per task and split, and skipped examples, as a plain-text table with a total row."""
    rows = [[task, *(meta["counts"][task][s] for s in SPLITS),
             sum(meta["skipped"][task].values())] for task in meta["counts"]]
    rows.append(["total", *(sum(row[i] for row in rows) for i in range(1, 5))])
    width = max(len(row[0]) for row in rows)
    lines = [f"{'task':<{width}}  " + "  ".join(f"{h:>7}" for h in (*SPLITS, "skipped"))]
    lines += [f"{row[0]:<{width}}  " + "  ".join(f"{c:>7}" for c in row[1:]) for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                    help="comma-separated BIG-bench task names (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val", type=float, default=0.1, help="validation fraction per task")
    ap.add_argument("--test", type=float, default=0.2, help="test fraction per task")
    for split in SPLITS:
        ap.add_argument(f"--max-{split}", type=int, metavar="N",
                        help=f"keep a task-stratified {split} subset of N pairs")
    ap.add_argument("--cache-dir", type=Path, help="BIG-bench cache (default: "
                    "$GRADPROJ_CACHE/bigbench or ~/.cache/gradproj/bigbench)")
    ap.add_argument("--archive", type=Path, help=f"the {ARCHIVE_NAME} to read (default: the "
                    f"cache's, downloaded with pip if missing)")
    ap.add_argument("--out", type=Path, help="folder for the pairs (default: "
                    "<cache>/pairs-<seed>)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:
        settings = PairSettings(tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
                                args.seed, args.val, args.test, args.max_train, args.max_val,
                                args.max_test)
        _, meta, folder, reused = prepare(settings, args.cache_dir, args.archive, args.out)
    except BigbenchError as exc:
        print(f"bigbench_pairs: error: {exc}", file=sys.stderr)
        return 2
    print(table(meta))
    print(f"{'reused' if reused else 'wrote'} {folder} in {time.perf_counter() - start:.1f} s "
          f"(seed {settings.seed}, archive sha256 {meta['archive']['sha256'][:12]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
