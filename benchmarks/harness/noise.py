"""Label-noise measurements of the benchmarks (gradproj.evaluation.noise flips the pairs and
counts what a selection removed):

    AUROC(s)        P(s(clean) > s(flipped)) + ½ P(tie)       (0.5: chance; > 0.5: flips score low)

Per source task: the same AUROC within each task (ids ``<task>-<row>``), for tasks holding both
clean and flipped scored pairs. :func:`norm_diagnosis` splits IF = ‖g_d‖ ‖ḡ_V‖ cos(g_d, ḡ_V)
into its norm and its direction, to see whether a score ranks flips by gradient size alone.
"""

from __future__ import annotations

import numpy as np

from gradproj.evaluation.noise import flip_records, selection_stats  # noqa: F401
from gradproj.evaluation.stats import auroc, spearman

SCORES = ("lossdiff", "irm", "if")
"""The score columns whose AUROC is reported (IF is the column that marks a scored pair)."""


def task_names(ids) -> np.ndarray:
    """The source task of each pair id: the part before its last "-" ([n] str)."""
    return np.array([i.rsplit("-", 1)[0] for i in ids])


def auroc_clean_vs_flipped(cols: dict[str, np.ndarray], is_flip: np.ndarray) -> dict[str, float]:
    """Score name → AUROC(clean > flipped); ``cols`` name → [n], ``is_flip`` [n] bool."""
    return {name: auroc(values, ~is_flip) for name, values in cols.items()}


def per_task_auroc(ids, cols: dict[str, np.ndarray], is_flip: np.ndarray,
                   scored: np.ndarray | None = None) -> dict[str, dict]:
    """Task → {n, n_flipped, score: AUROC} over the ``scored`` pairs ([n] bool; default: IF
    finite), for tasks with both clean and flipped pairs."""
    tasks = task_names(ids)
    scored = np.isfinite(cols["if"]) if scored is None else scored
    out = {}
    for name in sorted(set(tasks)):
        m = (tasks == name) & scored
        if 0 < int(is_flip[m].sum()) < int(m.sum()):
            out[str(name)] = {"n": int(m.sum()), "n_flipped": int(is_flip[m].sum()),
                              **auroc_clean_vs_flipped({c: v[m] for c, v in cols.items()},
                                                       is_flip[m])}
    return out


def score_means(cols: dict[str, np.ndarray], is_flip: np.ndarray) -> dict[str, dict]:
    """Score → mean over clean pairs, over flipped pairs (None without flips), and std."""
    return {c: {"clean": float(np.nanmean(v[~is_flip])),
                "flipped": float(np.nanmean(v[is_flip])) if is_flip.any() else None,
                "std": float(np.nanstd(v))} for c, v in cols.items()}


def score_columns(ids, cols: dict[str, np.ndarray], is_flip: np.ndarray) -> dict:
    """Per-pair scores as JSON columns: ids, flipped, one list per score (non-finite → None)."""
    return {"ids": list(ids), "flipped": is_flip.tolist(),
            **{c: [float(v) if np.isfinite(v) else None for v in values]
               for c, values in cols.items()}}


def _column(table: dict, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in table[name]], float)


def norm_diagnosis(table: dict, norms: dict[str, float]) -> dict[str, dict]:
    """AUROC(clean > flipped) of IF, of the cosine (IF / ‖g_d‖, the cosine's order) and of
    −‖g_d‖, and Spearman(IF, ‖g_d‖), over all pairs ("all") and per task.

    ``table``: :func:`score_columns` output (``ids``, ``flipped``, ``if``, optional
    ``lossdiff``); ``norms``: pair id → ‖g_d‖ (the store's norm column). Pairs without a finite
    IF or a positive norm are left out.
    """
    ids = table["ids"]
    flip = np.array(table["flipped"], bool)
    score = _column(table, "if")
    norm = np.array([norms.get(i, np.nan) for i in ids], float)
    ok = np.isfinite(score) & np.isfinite(norm) & (norm > 0)
    cols = {"if": score, "cosine": np.where(ok, score / np.where(ok, norm, 1), np.nan),
            "-norm": -norm}
    if "lossdiff" in table:
        cols["lossdiff"] = _column(table, "lossdiff")

    def row(m):
        m = m & ok
        return {"n": int(m.sum()), "n_flipped": int(flip[m].sum()),
                **auroc_clean_vs_flipped({c: v[m] for c, v in cols.items()}, flip[m]),
                "spearman_if_norm": spearman(score[m], norm[m]),
                "norm_ratio_flipped_clean": float(np.median(norm[m & flip])
                                                  / np.median(norm[m & ~flip]))}

    tasks = task_names(ids)
    out = {"all": row(np.ones(len(ids), bool))}
    for t in sorted(set(tasks)):
        m = tasks == t
        if 0 < int(flip[m & ok].sum()) < int((m & ok).sum()):
            out[str(t)] = row(m)
    return out


# ------------------------------------------------------------------------------ tables

def noise_lines(noise: dict[str, dict], keep: float, rules) -> list[str]:
    """Markdown: per flip rate, the AUROC of every score and, per rule, the flips it removes
    (and its keep AUROC); then per-task AUROCs when there are several tasks.

    ``noise``: key → {flip, n_flipped, auroc_clean_vs_flipped, rules: {rule: {flips_removed,
    keep_auroc}}, per_task_auroc}; ``keep``: the keep fraction (chance = 1 − keep).
    """
    if not noise:
        return []
    lines = ["| flip rate | flipped | AUROC IF | AUROC LossDiff | AUROC IRM | "
             + " | ".join(f"{r}: removed (keep AUROC)" for r in rules) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(rules)]
    keys = sorted(noise)
    for key in keys:
        n, a = noise[key], noise[key]["auroc_clean_vs_flipped"]
        cells = [f"{n['rules'][r]['flips_removed']:.0%} ({n['rules'][r]['keep_auroc']:.2f})"
                 for r in rules]
        of = f" of {n['n_train']}" if "n_train" in n else ""
        lines.append(f"| {n['flip']:.0%} | {n['n_flipped']}{of} | {a['if']:.3f} | "
                     f"{a['lossdiff']:.3f} | {a['irm']:.3f} | " + " | ".join(cells) + " |")
    tasks = sorted({t for k in keys for t in noise[k].get("per_task_auroc") or {}})
    if len(tasks) > 1:          # one "task" (the generated data) repeats the row above
        lines += ["", "AUROC clean > flipped within each source task (IF / LossDiff / IRM; "
                  "n flipped of n):", "",
                  "| task | " + " | ".join(f"{noise[k]['flip']:.0%} flipped" for k in keys)
                  + " |", "|---|" + "---|" * len(keys)]
        for t in tasks:
            cells = []
            for k in keys:
                a = (noise[k].get("per_task_auroc") or {}).get(t)
                cells.append(f"{a['if']:.2f} / {a['lossdiff']:.2f} / {a['irm']:.2f} "
                             f"({a['n_flipped']}/{a['n']})" if a else "")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "AUROC = P(score of a clean pair > score of a flipped pair); a keep decision's "
              "AUROC is (TPR + TNR)/2 of keeping clean pairs. The random rule is its first "
              f"seed's draw. Chance: AUROC 0.5, flips removed 1 − keep = {1 - keep:.0%}."]
    return lines


def norm_diagnosis_lines(result: dict[str, dict]) -> list[str]:
    """Markdown table of :func:`norm_diagnosis`: one row per pair group."""
    cols = [c for c in ("if", "cosine", "-norm", "lossdiff") if c in result["all"]]
    lines = ["| pairs | n (flipped) | " + " | ".join(f"AUROC {c}" for c in cols)
             + " | Spearman(IF, ‖g‖) | median ‖g‖ flipped / clean |",
             "|---|---:|" + "---:|" * (len(cols) + 2)]
    for name, r in result.items():
        lines.append(f"| {name} | {r['n']} ({r['n_flipped']}) | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols)
                     + f" | {r['spearman_if_norm']:.3f} | {r['norm_ratio_flipped_clean']:.2f} |")
    return lines
