"""Tables of benchmarks/bench_hh.py's JSON (markdown lines), used by the script, the benchmark
pages (benchmarks/pages.py) and the README row."""

from __future__ import annotations

from benchmarks.harness.tables import markdown_table

NAMES = {"accuracy": "reward acc", "policy_accuracy": "policy acc", "mean_loss": "DPO loss"}


def interval(t, spec: str = "+.3f") -> str:
    """``mean [low, high]`` of a (mean, low, high) triple."""
    m, lo, hi = t
    return f"{m:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def setting_line(res: dict) -> str:
    d, s = res["data"], res["settings"]
    return (f"{d['file']}: {d['n_fit']} of {d['n_rows']} pairs fit {s['max_length']} tokens "
            f"untruncated; train {d['train']} ({d['n_flipped']} flipped), val {d['val']}, test "
            f"{d['test']}; seeds {s['seeds']} (θ's LoRA init and data order, θ_V, projection, "
            f"continued run's order, random draw); keep {s['keep']}; lr {s['lr']}, batch "
            f"{s['batch']}, {s['warm_epochs']:g} epoch warm-up, {s['cont_epochs']:g} epoch "
            f"continued; {res['seconds'] / 60:.0f} min, commit {res['machine'].get('commit')}.")


def learnability_lines(res: dict) -> list[str]:
    b = res["base"]
    rows = [["base (fresh LoRA)", f"{b['accuracy']:.3f}", f"{b['policy_accuracy']:.3f}",
             f"{b['mean_loss']:.4f}"]]
    rows += [[f"θ, seed {s['seed']}", f"{s['theta']['accuracy']:.3f}",
              f"{s['theta']['policy_accuracy']:.3f}", f"{s['theta']['mean_loss']:.4f}"]
             for s in res["seeds"] if s.get("theta")]
    m = res["seed_means"]
    rows.append(["θ, mean [95% CI]", interval(m["theta_accuracy"], ".3f"),
                 interval(m["theta_policy_accuracy"], ".3f"), interval(m["theta_mean_loss"], ".4f")])
    return [markdown_table(["model", "reward acc", "policy acc", "DPO loss"], rows)]


def rule_lines(res: dict) -> list[str]:
    rows = []
    for r in res["rules"]:
        rows.append([r["rule"], f"{r['kept']:.0f}", f"{r['flipped_in_kept']:.0%}",
                     *[f"{r[k]:.{4 if k == 'mean_loss' else 3}f} ± "
                       f"{r[k + '_std']:.{4 if k == 'mean_loss' else 3}f}" for k in NAMES]])
    return [markdown_table(["rule", "kept", "flipped in kept", *NAMES.values()], rows)]


def paired_lines(res: dict) -> list[str]:
    rows = []
    for rule, bases in res["paired"].items():
        for base, d in bases.items():
            rows.append([f"{rule} − {base}", *[interval(d[k], "+.4f" if k == "mean_loss" else "+.3f")
                                               for k in NAMES]])
    return [markdown_table(["difference (seed-paired)", *[f"Δ {v}" for v in NAMES.values()]],
                           rows)]


def correlation_lines(res: dict) -> list[str]:
    rows = []
    for s in res["seeds"]:
        c, mg = s["correlations"], s["margin_theta"]
        rows.append([str(s["seed"]), f"{s['theta']['accuracy']:.3f}" if s.get("theta") else "–",
                     f"{mg['share_positive']:.2f}", f"{mg['q10']:+.2f} / {mg['q50']:+.2f} / "
                     f"{mg['q90']:+.2f}",
                     f"{c['irm']['pearson']:+.2f} [{c['irm']['pearson_ci95'][0]:+.2f}, "
                     f"{c['irm']['pearson_ci95'][1]:+.2f}]",
                     f"{c['irm']['spearman']:+.2f} [{c['irm']['spearman_ci95'][0]:+.2f}, "
                     f"{c['irm']['spearman_ci95'][1]:+.2f}]",
                     f"{c['lossdiff']['pearson']:+.2f}", f"{c['lossdiff']['spearman']:+.2f}"])
    m = res["seed_means"]
    rows.append(["mean [95% CI]", interval(m["theta_accuracy"], ".3f"), "", "",
                 interval(m["pearson_irm_if"], "+.2f"), interval(m["spearman_irm_if"], "+.2f"),
                 interval(m["pearson_lossdiff_if"], "+.2f"),
                 interval(m["spearman_lossdiff_if"], "+.2f")])
    return [markdown_table(["seed", "θ test reward acc", "train margin > 0",
                            "train margin q10 / q50 / q90", "Pearson(IRM, IF)",
                            "Spearman(IRM, IF)", "Pearson(LossDiff, IF)",
                            "Spearman(LossDiff, IF)"], rows)]


def decomposition_lines(res: dict) -> list[str]:
    """IF = σ(−IRM) × alignment, per seed: what the correlation's sign follows."""
    rows = []
    for s in res["seeds"]:
        d = s["correlations"].get("decomposition")
        if d is None:
            return []
        rows.append([str(s["seed"]), f"{s['correlations']['irm']['pearson']:+.2f}",
                     f"{d['pearson_irm_alignment']:+.2f}",
                     f"{d['share_alignment_positive']:.2f}",
                     f"{d['mean_alignment_low_irm']:+.3g} / {d['mean_alignment_high_irm']:+.3g}"])
    return [markdown_table(["seed", "Pearson(IRM, IF)", "Pearson(IRM, alignment)",
                            "alignment > 0",
                            "mean alignment, low / high IRM half"], rows)]


def auroc_lines(res: dict) -> list[str]:
    m = res["seed_means"]
    names = [k.removeprefix("auroc_") for k in m if k.startswith("auroc_")]
    if not names:
        return []
    rows = [[str(s["seed"]), *[f"{s['auroc_clean_vs_flipped'][n]:.3f}" for n in names]]
            for s in res["seeds"]]
    rows.append(["mean [95% CI]", *[interval(m[f"auroc_{n}"], ".3f") for n in names]])
    return [markdown_table(["seed", *[f"AUROC {n}" for n in names]], rows)]


def report(res: dict) -> list[str]:
    """The whole result as markdown lines (headings at level 3)."""
    out = [setting_line(res), "", "### Learnability (held-out test pairs)", "",
           *learnability_lines(res), "", "### Selection rules (continued from θ, held-out)", "",
           *rule_lines(res), "", *paired_lines(res), "",
           "### IRM and LossDiff against IF, θ's margins", "", *correlation_lines(res), "",
           "IF(d) = σ(−h_d) · ⟨∇h_d, −∇L_V⟩ (h = IRM): a weight falling with the margin times "
           "the alignment of the pair's margin gradient with the validation descent direction:",
           "", *decomposition_lines(res)]
    if auroc_lines(res):
        out += ["", "### Label noise: AUROC (clean > flipped) per score", "", *auroc_lines(res)]
    return out
