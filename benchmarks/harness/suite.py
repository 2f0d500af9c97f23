"""Markdown of the evidence benchmarks' JSON (selection, learnability, dynamics, fidelity, LDS),
for their pages (benchmarks/pages.py); tables from :mod:`benchmarks.harness.tables` and
``.noise``.
"""

from __future__ import annotations

from benchmarks.harness.tables import present_rules, select_report


def render_fidelity(res: dict) -> list[str]:
    info = res.get("fidelity_info", {})
    return [f"{info.get('n_train')} train and {info.get('n_val')} validation pairs "
            f"({info.get('data')}), exact per-pair gradients over the LoRA weights at a "
            f"perturbed fresh adapter; projection seeds {info.get('seeds')} (mean ± std). "
            "Score = inner product with the mean validation gradient.", "",
            res.get("markdown_fidelity", "")]


def render_lds(res: dict) -> list[str]:
    s, a, nf = res.get("settings", {}), res.get("args", {}), res.get("noise_floor", {})
    head = (f"Tiny Llama (P = {s.get('P', '?')}), {a.get('train_pairs', '?')} train pairs "
            f"({a.get('flip', 0):.0%} flipped), {a.get('val_pairs', '?')} validation pairs, "
            f"{nf.get('n_subsets', '?')} random half-subsets, each retrained from θ; LDS = "
            "Spearman(Σ_subset IF, −validation loss). Noise ceiling from retraining the same "
            f"subsets with other data-order seeds: {nf.get('ceiling', float('nan')):.2f}.")
    return [head, "", res.get("table", "(no table in the JSON)")]


def render_select(res: dict) -> list[str]:
    lines = [f"{res.get('data', 'the generated task')}: {res['task']['n_train']} train pairs ({res['task']['n_flipped']} "
             f"flipped), {res['task']['n_val']} val, {res['task'].get('n_val2', 0)} second val, "
             f"{res['task']['n_test']} test; keep {res['settings']['keep']}; seeds "
             f"{res['settings']['seeds']}.", ""]
    if res.get("learnability"):
        from benchmarks.harness.learnability import markdown

        lines += ["Learnability of each pooled source (base vs warm-up θ on its held-out pairs):",
                  "", markdown(res["learnability"]), ""]
    return lines + select_report(res, present_rules(res))


def render_learnability(res: dict) -> list[str]:
    from benchmarks.harness.learnability import markdown

    return [markdown(res["rows"])]


def render_dynamics(res: dict) -> list[str]:
    from benchmarks.harness.dynamics import markdown

    return [f"{res['source']}: {res['n_train']} training pairs ({res['n_flipped']} flipped), "
            f"{res['n_test']} held-out; one more epoch from θ on every pair, per seed.", "",
            markdown(res["runs"], set(res.get("flipped", [])) or None)]
