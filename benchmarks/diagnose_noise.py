"""Is IF's ranking of flipped vs clean pairs a gradient-norm effect? A diagnosis of a finished
``bench_select.py`` run, from its JSON and the store it left in its work folder.

IF(d) = ⟨g_d, ḡ_V⟩ = ‖g_d‖ · ‖ḡ_V‖ · cos(g_d, ḡ_V). A flipped pair has a high DPO loss at θ and
so a large gradient; if the gradients share a common direction (every DPO gradient of a
short-answer task pushes the same answer-format features), the norm alone can lift a flipped
pair's IF. This prints AUROC(clean > flipped) for IF, for the cosine (IF / ‖g_d‖: the same
order as the cosine, ‖ḡ_V‖ is one constant) and for −‖g_d‖, overall and per source task, and
the rank correlation of IF with ‖g_d‖.

    .venv/bin/python benchmarks/diagnose_noise.py \\
        --json docs/bench_select_bigbench.json --work /tmp/gradproj-bench-suite-select
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_select import auroc, spearman, task_names  # noqa: E402


def diagnose(table: dict, norms: dict[str, float]) -> dict:
    """AUROC of IF, cosine and −norm overall and per task; Spearman(IF, norm)."""
    ids = table["ids"]
    flip = np.array(table["flipped"], bool)
    score = np.array([np.nan if v is None else v for v in table["if"]], float)
    norm = np.array([norms.get(i, np.nan) for i in ids], float)
    ok = np.isfinite(score) & np.isfinite(norm) & (norm > 0)
    cols = {"if": score, "cosine": np.where(ok, score / np.where(ok, norm, 1), np.nan),
            "-norm": -norm}
    if "lossdiff" in table:
        cols["lossdiff"] = np.array([np.nan if v is None else v for v in table["lossdiff"]])
    tasks = task_names(ids)

    def row(m):
        m = m & ok
        return {"n": int(m.sum()), "n_flipped": int(flip[m].sum()),
                **{c: auroc(v[m], ~flip[m]) for c, v in cols.items()},
                "spearman_if_norm": spearman(score[m], norm[m]),
                "norm_ratio_flipped_clean": float(np.median(norm[m & flip])
                                                  / np.median(norm[m & ~flip]))}

    out = {"all": row(np.ones(len(ids), bool))}
    for t in sorted(set(tasks)):
        m = tasks == t
        if 0 < int(flip[m & ok].sum()) < int((m & ok).sum()):
            out[str(t)] = row(m)
    return out


def table_lines(result: dict) -> list[str]:
    cols = [c for c in ("if", "cosine", "-norm", "lossdiff") if c in result["all"]]
    lines = ["| pairs | n (flipped) | " + " | ".join(f"AUROC {c}" for c in cols)
             + " | Spearman(IF, ‖g‖) | median ‖g‖ flipped / clean |",
             "|---|---:|" + "---:|" * (len(cols) + 2)]
    for name, r in result.items():
        lines.append(f"| {name} | {r['n']} ({r['n_flipped']}) | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols)
                     + f" | {r['spearman_if_norm']:.3f} | {r['norm_ratio_flipped_clean']:.2f} |")
    return lines


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
    found = {k: store.manifest["settings"].get(k) for k in expected}
    if missing or found != expected:
        print(f"diagnose_noise: {store_dir} is not the store of {args.json} ("
              + (f"{len(missing)} scored pairs missing, e.g. {missing[0]}" if missing
                 else f"settings {found} != {expected}") + "); rerun bench_select", file=sys.stderr)
        return 2
    norms = dict(zip(stored, store.column("norm").astype(float).tolist(), strict=True))
    result = diagnose(res["score_table"], norms)
    print(f"{res['data']}, {rate} flipped, store {store_dir}")
    print("\n".join(table_lines(result)))
    if args.out:
        Path(args.out).write_text(json.dumps({"flip": float(rate), "per_task": result},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
