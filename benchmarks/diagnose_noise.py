"""Is IF's ranking of flipped vs clean pairs a gradient-norm effect? A diagnosis of a finished
``bench_select.py`` run, from its JSON and the store it left in its work folder.

IF(d) = ⟨g_d, ḡ_V⟩ = ‖g_d‖ · ‖ḡ_V‖ · cos(g_d, ḡ_V). A flipped pair has a high DPO loss at θ and
so a large gradient; if the gradients share a common direction (every DPO gradient of a
short-answer task pushes the same answer-format features), the norm alone can lift a flipped
pair's IF. This prints AUROC(clean > flipped) for IF, for the cosine (IF / ‖g_d‖: the same
order as the cosine, ‖ḡ_V‖ is one constant) and for −‖g_d‖, overall and per source task, and
the rank correlation of IF with ‖g_d‖ (benchmarks.harness.noise.norm_diagnosis).

    .venv/bin/python -m benchmarks.diagnose_noise \\
        --json docs/benchmarks/bench_select_bigbench.json --work /tmp/gradproj-bench-suite-select
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from benchmarks.harness.noise import norm_diagnosis, norm_diagnosis_lines  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="bench_select.py's JSON")
    ap.add_argument("--work", required=True, help="bench_select.py's --work folder")
    ap.add_argument("--out", default=None, help="write the result here as JSON")
    args = ap.parse_args(argv)
    from gradproj.store.shards import Store

    res = json.loads(Path(args.json).read_text())
    rate = f"{res['settings']['flip']:.2f}"
    store_dir = Path(args.work) / f"flip-{rate}" / "select" / "store"
    if not store_dir.is_dir():
        print(f"diagnose_noise: {store_dir}: no store (the run's work folder is gone)",
              file=sys.stderr)
        return 2
    store = Store(store_dir, verify=False)
    stored = store.ids()
    missing = [i for i, s in zip(res["score_table"]["ids"], res["score_table"]["if"],
                                 strict=True) if s is not None and i not in set(stored)]
    expected = {k: res["store"][k] for k in ("proj_dim", "max_length") if k in res["store"]}
    found = {k: store.manifest["settings"].get(k, store.manifest.get(k)) for k in expected}
    if missing or found != expected:
        print(f"diagnose_noise: {store_dir} is not the store of {args.json} ("
              + (f"{len(missing)} scored pairs missing, e.g. {missing[0]}" if missing
                 else f"settings {found} != {expected}") + "); rerun bench_select", file=sys.stderr)
        return 2
    norms = dict(zip(stored, store.column("norm").astype(float).tolist(), strict=True))
    result = norm_diagnosis(res["score_table"], norms)
    print(f"{res['data']}, {rate} flipped, store {store_dir}")
    print("\n".join(norm_diagnosis_lines(result)))
    if args.out:
        Path(args.out).write_text(json.dumps({"flip": float(rate), "per_task": result},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
