"""Markdown tables of the experiments' results: the selection benchmark (downstream accuracy,
score correlations, selections, cost, stages), the LDS and the query cost. Each takes the
results as written to JSON, so a report can be rebuilt from the file alone. Label-noise tables
are in :mod:`benchmarks.harness.noise`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.harness.noise import noise_lines
from gradproj.core.atomic import write_atomic
from gradproj.evaluation.stats import mean_std, paired_difference_ci

PAPER = {"pearson_lossdiff_if": 0.77, "pearson_irm_if": 0.67,
         "overlap_lossdiff_irm_tif": (0.73, 0.78), "overlap_single_tif": (0.60, 0.70)}
"""The paper's reported values (Pearson with IF; overlap of selections with TIF's)."""
RULES = ("all", "random", "top-if", "reward-gap", "tif", "lossdiff", "irm", "lossdiff-irm")
"""The selection rules in the order of the selection benchmark's tables."""


def present_rules(res: dict) -> list[str]:
    """The rules of :data:`RULES` but ``all`` that a selection benchmark result holds: those
    of every noise rate where it has noise results (computed for every rule, whichever ran
    downstream), else those of its downstream rows. A result written before a rule was added
    reports the rules it has."""
    noise = [set(entry.get("rules", {})) for entry in (res.get("noise") or {}).values()]
    have = set.intersection(*noise) if noise else {r["rule"] for r in res.get("rules", [])}
    return [r for r in RULES if r != "all" and r in have]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table: header, separator, one line per row."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_between(path, begin: str, end: str, body: str) -> bool:
    """Replace what stands between the marker lines ``begin`` and ``end`` of the text file
    ``path`` with ``body`` (the text around them untouched); False, and nothing written, when
    the file or a marker is missing."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if begin not in text or end not in text.split(begin, 1)[1]:
        return False
    head, rest = text.split(begin, 1)
    write_atomic(path, f"{head}{begin}\n{body.strip(chr(10))}\n{end}{rest.split(end, 1)[1]}")
    return True


def bench_markers(name: str) -> tuple[str, str]:
    """The begin and end marker lines of the block benchmarks/<name>.py writes into
    docs/results.md (with :func:`replace_between`)."""
    return (f"<!-- {name}: begin — written by benchmarks/{name}.py -->",
            f"<!-- {name}: end -->")


# ------------------------------------------------------------------------------ selection

def fmt(r: dict, key: str, spec: str = ".3f") -> str:
    """``mean ± std`` of an aggregated rule row (the std only when there is one)."""
    m, sd = r[key], r.get(key + "_std")
    return f"{m:{spec}}" + (f" ± {sd:{spec}}" if sd else "")


def downstream_lines(res: dict) -> list[str]:
    """Downstream: every rule's held-out metrics after continued training (mean ± std), and
    the seed-paired difference of policy accuracy to ``all`` where the results have it."""
    paired = any("policy_accuracy_vs_all" in r for r in res["rules"])
    head = ["model", "kept", "flips removed", "flipped in kept", "overlap w/ TIF", "policy acc",
            *(["Δ policy acc vs all (95% CI)"] if paired else []), "reward acc", "DPO loss",
            "train s"]
    rows = [[label, "", "", "", "", f"{r['policy_accuracy']:.3f}", *([""] if paired else []),
             f"{r['accuracy']:.3f}", f"{r['mean_loss']:.4f}", ""]
            for label, r in (("base (adapter off)", res["base"]), ("warm-up θ", res["theta"]),
                             ("θ_V (θ + val)", res["theta_v"]))]
    for r in res["rules"]:
        d = r.get("policy_accuracy_vs_all")
        ci = f" ({d[1]:+.3f}, {d[2]:+.3f})" if d and d[1] == d[1] else ""   # NaN: one seed
        delta = [f"{d[0]:+.3f}{ci}" if d else ""] if paired else []
        rows.append([f"θ + {r['rule']}", f"{r['kept']:.0f}", fmt(r, "flips_removed", ".0%"),
                     fmt(r, "flipped_in_kept", ".0%"), fmt(r, "overlap_tif", ".2f"),
                     fmt(r, "policy_accuracy"), *delta, fmt(r, "accuracy"),
                     fmt(r, "mean_loss", ".4f"), f"{r['train_seconds']:.0f}"])
    return [markdown_table(head, rows), "",
            f"(mean ± std over the continued-training seeds run, "
            f"{sorted({r['seed'] for r in res.get('runs', [])})}; std "
            "uses ddof=1" + ("; Δ: paired by seed, t interval)" if paired else ")")]


def ablation_lines(res: dict, rules) -> list[str]:
    """Every rule's held-out reward accuracy, policy accuracy, margin and loss (mean ± std over
    seeds) and its seed-paired differences to ``all`` and ``random`` with 95% t intervals,
    from the runs (the tables of ``gradproj ablate``)."""
    from gradproj.evaluation.ablate import metric_lines, paired_lines, summarize

    summary = summarize(res.get("runs", []), [r for r in RULES if r in rules or r == "all"])
    return [*metric_lines(summary), *paired_lines(summary)] if summary else []


def score_lines(res: dict) -> list[str]:
    """LossDiff and IRM against IF (and the paper's values), AUROC of every score."""
    c, a = res["correlations"], res["auroc_clean_vs_flipped"]
    lines = ["| score | Pearson with IF (95% CI) | Spearman with IF | paper Pearson | "
             "AUROC clean > flipped |", "|---|---:|---:|---:|---:|"]
    for s, paper in (("lossdiff", PAPER["pearson_lossdiff_if"]),
                     ("irm", PAPER["pearson_irm_if"])):
        lo, hi = c[s]["pearson_if_ci95"]
        lines.append(f"| {s} | {c[s]['pearson_if']:.3f} ({lo:.2f}–{hi:.2f}) | "
                     f"{c[s]['spearman_if']:.3f} | {paper:.2f} | {a[s]:.3f} |")
    lines.append(f"| if | 1 | 1 | | {a['if']:.3f} |")
    lines.append("")
    lines.append(f"Pearson(LossDiff, IRM) = {c['lossdiff_irm']['pearson']:.3f}, Spearman "
                 f"{c['lossdiff_irm']['spearman']:.3f}")
    return lines


def cost_lines(res: dict) -> list[str]:
    """The cost of a second query (benchmarks.harness.scoring.second_query_cost)."""
    c = res.get("cost")
    if not c:
        return []
    return [
        f"Answering a second validation set ({c['n_val2']} pairs) for {c['n_train']} training "
        "pairs, once θ exists:", "",
        "| method | seconds | ratio to the store |", "|---|---:|---:|",
        f"| store: val gradients + lookup | {c['store_answer_s']:.1f} | 1× |",
        f"| LossDiff: new θ_V ({c['lossdiff_aux_training_s']:.1f}s) + forward passes "
        f"({c['lossdiff_forward_s']:.1f}s) | {c['lossdiff_answer_s']:.1f} | "
        f"{c['ratio_lossdiff_to_store']:.1f}× |",
        f"| IF without a store: build + answer | {c['if_without_store_s']:.1f} | "
        f"{c['ratio_if_without_store_to_store']:.1f}× |", "",
        f"IF without a store / LossDiff = {c['ratio_if_without_store_to_lossdiff']:.1f}× "
        "(the paper: IF ≈ 120× slower than LossDiff-IRM). Spearman between the second set's IF "
        f"and its LossDiff: {c['spearman_if_val2_lossdiff_val2']:.3f}."]


def selection_lines(res: dict) -> list[str]:
    """Every rule's selection (the random rule's for the first seed), trained on or not."""
    keep = res["settings"]["keep"]
    lines = ["| rule | kept | flips removed | overlap w/ TIF | bands (quantiles) |",
             "|---|---:|---:|---:|---|"]
    for rule, r in res.get("selections", {}).items():
        bands = ", ".join(f"{k} ({a:.3f}, {b:.3f})" for k, (a, b) in r["bands"].items())
        lines.append(f"| {rule} | {r['kept']} | {r['flips_removed']:.0%} | "
                     f"{r['overlap_tif']:.2f} | {bands} |")
    lines.append("")
    lines.append(f"chance: a random selection removes 1 − keep = {1 - keep:.0%} of the flips and "
                 f"overlaps an equal-sized selection by keep = {keep:.2f} in expectation")
    return lines


def stage_lines(res: dict) -> list[str]:
    """Seconds of every stage and of each rule's continued training."""
    lines = ["| stage | seconds |", "|---|---:|"]
    for k, v in res["stages_seconds"].items():
        lines.append(f"| {k} | {v:.1f} |")
    for r in res["rules"]:
        lines.append(f"| continued training on {r['rule']} ({r['kept']:.0f} pairs), per seed | "
                     f"{r['train_seconds']:.1f} ± {r['train_seconds_std']:.1f} |")
    lines.append(f"| total | {res['total_seconds']:.0f} |")
    return lines


def select_report(res: dict, rules) -> list[str]:
    """Every table of a selection benchmark's results (bench_select's JSON): downstream (when
    rules were trained on), scores, label noise (``rules``: those in the noise table), the
    selections, the cost of a second query, the stages."""
    trained = [downstream_lines(res), ablation_lines(res, rules)] if res.get("rules") else []
    parts = trained + [
        score_lines(res), noise_lines(res.get("noise") or {}, res["settings"]["keep"],
                                      rules),
        selection_lines(res), cost_lines(res), stage_lines(res)]
    return [line for part in parts for line in part + [""]]


# ------------------------------------------------------------------------------ LDS

def lds_row_name(row: dict) -> str:
    """"exact", or "store <kind> k=<k> seed=<s> <grad>" for a store row."""
    parts = [row["variant"]]
    if row["variant"].startswith("store"):
        parts += [f"k={row['k']}", f"seed={row['proj_seed']}", row["grad_type"]]
    return " ".join(parts)


def lds_table(rows: list[dict]) -> str:
    """One line per (variant, k, grad type): LDS and CI of the first projection seed against the
    loss at the seed of record and against the mean loss over data-order seeds, and the mean ± SD
    of the LDS over projection seeds when there are several."""
    def interval(lo, hi):
        return "" if lo != lo else f"[{lo:.3f}, {hi:.3f}]"

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["variant"], r["k"], r["grad_type"]), []).append(r)
    body = []
    for (variant, k, gt), rs in groups.items():
        first = rs[0]
        many = (f"{np.mean([r['lds'] for r in rs]):.3f} ± {np.std([r['lds'] for r in rs]):.3f}"
                f" ({len(rs)})" if len(rs) > 1 else "")
        fid = first.get("if_spearman_vs_exact")
        mean = first.get("lds_seed_mean")
        body.append([variant, "" if k is None else k, gt or "", f"{first['lds']:.3f}",
                     interval(first["ci_low"], first["ci_high"]), many,
                     "" if mean is None else f"{mean:.3f}",
                     "" if mean is None else interval(first["seed_mean_ci_low"],
                                                      first["seed_mean_ci_high"]),
                     "" if fid is None else f"{fid:.3f}"])
    return markdown_table(["variant", "k", "grad", "LDS", "95% CI", "LDS over proj. seeds",
                             "LDS vs seed-mean loss", "95% CI", "IF Spearman vs exact"], body)


# ------------------------------------------------------------------------------ query cost

def query_cost_table(results: dict, m: int, block_rows: int) -> str:
    """bench_query's results (benchmarks.harness.querycost): one row per store size and
    query against the limits measured alongside, the limits themselves, the one-time verify, and
    the SmolLM2 build-versus-answer costs."""
    lim = results["limits"]
    lines = [] if "synthetic" not in results else [
        "| N | store GB | query | cold first pass (s) | warm median (s) | GB/s (warm) | "
        "% bandwidth | % matmul FLOP/s | limits alongside (GB/s, GFLOP/s) | peak RSS +MiB | "
        "peak anon +MiB (of it output) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in results.get("synthetic", []):
        for qn, r in e["queries"].items():
            flop = f"{r['flop_frac']:.1%}" if "flop_frac" in r else "–"
            cold = f"{r['first']:.2f}" + ("" if r["cold"] else " (warm)")
            label = {"mean_ref": "mean, reference: torch cast, reused buffer",
                     "mean_numpy": "mean, reference: plain NumPy block @ v"}.get(qn, qn)
            rss = (f"{r['peak_rss_increase'] / 2**20:.0f}"
                   if r["peak_rss_increase"] is not None else "?")
            lines.append(
                f"| {e['n']:,} | {e['store_bytes'] / 1e9:.2f} | {label} | {cold} | "
                f"{r['warm_median']:.2f} | {e['store_bytes'] / r['warm_median'] / 1e9:.2f} | "
                f"{r['bytes_frac']:.1%} | {flop} | {r['local_limits']['bandwidth'] / 1e9:.0f}, "
                f"{r['local_limits']['matmul_flops'] / 1e9:.0f} | {rss} | "
                f"{r['peak_anon_increase'] / 2**20:.0f} ({r['output_bytes'] / 2**20:.0f}) |")
    lines.append("")
    lines.append("Limits (same run, outside the queries): memory read bandwidth "
                 f"{lim['bandwidth'] / 1e9:.1f} GB/s "
                 f"(torch sum {lim['bw_torch_sum'] / 1e9:.1f}, numpy sum "
                 f"{lim['bw_numpy_sum'] / 1e9:.1f}, numpy copy {lim['bw_numpy_copy'] / 1e9:.1f} "
                 f"GB/s read+write); fp32 matmul {lim['matmul_flops'] / 1e9:.0f} GFLOP/s "
                 f"(the higher of [4096, k] @ [k, {m}]: {lim['matmul_flops_nn'] / 1e9:.0f} and "
                 f"[{m}, k] @ [{block_rows}, k]ᵀ: {lim['matmul_flops_nt'] / 1e9:.0f}); "
                 f"float16→float32 cast of a [{block_rows}, k] block, float16 GB/s: numpy astype "
                 f"{lim['cast_numpy_f16_f32'] / 1e9:.2f}, torch .float() "
                 f"{lim['cast_torch_f16_f32'] / 1e9:.2f} (both into fresh memory); into a "
                 f"preallocated buffer: numpy {lim['cast_numpy_into_f16_f32'] / 1e9:.2f}, torch "
                 f"{lim['cast_torch_into_f16_f32'] / 1e9:.2f}. Percentages in the table are "
                 "against the limits measured inside each query's process just before and after "
                 "it (the higher of the two).")
    for e in results.get("synthetic", []):
        if "verify_warm_seconds" in e:
            lines.append(f"One-time verify (sha256 of every shard) of the {e['n']:,}-row store "
                         f"({e['store_bytes'] / 1e9:.2f} GB): {e['verify_warm_seconds']:.1f} s "
                         f"warm, {e.get('verify_cold_seconds', float('nan')):.1f} s cold; "
                         f"cold sequential disk read "
                         f"{(e.get('disk_read_bps') or float('nan')) / 1e9:.2f} GB/s.")
    s = results.get("smollm2")
    if s:
        lines.append("")
        lines.append("| SmolLM2-135M, CPU | seconds |")
        lines.append("|---|---|")
        lines.append(f"| build store, {s['n_train']} pairs (= recompute training gradients) | "
                     f"{s['build_seconds']:.1f} ({s['build_seconds'] / s['n_train']:.3f} s/pair) |")
        if s["extrapolated_2000"]:
            lines.append(f"| build store, 2000 pairs (EXTRAPOLATED linearly from "
                         f"{s['n_train']}) | {s['build_seconds_2000_extrapolated']:.0f} |")
        lines.append(f"| answer {s['n_val']} new validation pairs from the store, median of "
                     f"{len(s['answers'])} (first: {s['answer_first']:.1f}) | "
                     f"{s['answer_median']:.1f} |")
        a = s["answers"][-1]
        lines.append(f"| … of which validation gradients / lookup (last answer) | "
                     f"{a['validation_gradients']:.1f} / {a['lookup']:.2f} |")
        lines.append(f"| ratio recompute / answer | {s['ratio_build_over_answer']:.1f}× |")
        lines.append(f"| ratio (recompute + validation gradients) / answer | "
                     f"{s['ratio_scratch_over_answer']:.1f}× |")
        if s["extrapolated_2000"]:
            lines.append(f"| ratio recompute 2000 pairs (EXTRAPOLATED) / answer | "
                         f"{s['ratio_2000_over_answer_extrapolated']:.1f}× |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ projection

def speed_table(rows: list[dict]) -> str:
    """bench_projection's speed rows: median seconds per call and ratio to the GEMM limit."""
    return markdown_table(
        ["k", "variant", "median s", "× GEMM limit", "note"],
        [[r["k"], r["variant"], f"{r['median_seconds']:.3f}", f"{r['ratio_to_gemm']:.2f}",
          "" if r["cached_fraction"] is None else f"{100 * r['cached_fraction']:.0f}% of R cached"]
         for r in rows])


def fidelity_table(rows: list[dict], ks: Sequence[int], with_std: bool) -> str:
    """bench_projection's fidelity rows: Spearman, Pearson and sign agreement per kind (in the
    rows' order) and k, with the std over projection seeds when ``with_std``."""
    body = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        by_k = {r["k"]: r for r in rows if r["kind"] == kind}
        for metric in ("spearman", "pearson", "sign_agreement"):
            body.append([kind, metric] + [
                f"{by_k[k][metric]:.4f}" + (f" ± {by_k[k][metric + '_std']:.4f}"
                                            if with_std else "") for k in ks])
    return markdown_table(["kind", "metric"] + [f"k={k}" for k in ks], body)


SELECTION_KEYS = ("kept", "flips_removed", "flipped_in_kept", "overlap_tif", "bands",
                  "drop_reasons")
"""A run row's keys that describe its selection rather than its training."""


def reaggregate(res: dict, rules: Sequence[str]) -> dict:
    """A selection benchmark's results with ``rules`` (:func:`aggregate`) recomputed from its
    ``runs``, and ``selections`` taken from the first seed's runs where an older file lacks
    them; marked ``reaggregated``."""
    res["rules"] = aggregate(res.get("runs", []), rules)
    if "selections" not in res:       # older files: from the first seed's runs
        first = res["settings"]["seeds"][0]
        res["selections"] = {r["rule"]: {k: r[k] for k in SELECTION_KEYS} for r in res["runs"]
                             if r["seed"] == first}
    res["reaggregated"] = "rules and selections recomputed from the same runs by --replot"
    return res


AGGREGATED = ("kept", "flips_removed", "flipped_in_kept", "overlap_tif", "policy_accuracy",
              "accuracy", "mean_loss", "mean_margin", "train_seconds", "eval_seconds")


def aggregate(rows: list[dict], rules: Sequence[str], keys: Sequence[str] = AGGREGATED,
              baseline: str = "all") -> list[dict]:
    """Per rule (in ``rules`` order, those with rows): ``k`` and ``k_std`` = mean and sample
    std over seeds of every key, and ``policy_accuracy_vs_<baseline>`` = (mean, low, high) of
    the seed-paired difference to the baseline rule (t interval; when both ran)."""
    base = {r["seed"]: r["policy_accuracy"] for r in rows if r["rule"] == baseline}
    out = []
    for rule in rules:
        rs = [r for r in rows if r["rule"] == rule]
        if not rs:
            continue
        agg = {"rule": rule, "n_seeds": len(rs)}
        for k in keys:
            agg[k], agg[k + "_std"] = mean_std([r[k] for r in rs])
        paired = [(r["policy_accuracy"], base[r["seed"]]) for r in rs if r["seed"] in base]
        if paired and rule != baseline:
            agg[f"policy_accuracy_vs_{baseline}"] = paired_difference_ci(*zip(*paired))
        out.append(agg)
    return out
