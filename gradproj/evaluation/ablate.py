"""``gradproj ablate``: does selection help on *my* data? Every rule, continued from θ, on a test set.

For each rule r and seed s: select ``keep`` of the training pairs with r (the seed also draws
``random``), continue training from θ on the selection with data-order seed s, evaluate on the
test pairs. Per rule: mean ± sample std over seeds of held-out reward accuracy, policy accuracy,
margin and loss, and for every metric the seed-paired difference to ``all`` and to ``random``
with a 95% t interval, d̄ ± t_{0.975, n−1} · s_d / √n (n seeds; none for n = 1).

θ, θ_V, the scores and the store are the ``select`` pipeline's (reused from OUT like ``select``
does), so ``ablate`` after ``select`` on the same folder trains only the continued runs.

    OUT/ablation.json   settings, every run (rule, seed, metrics, cost), the per-rule summary
    OUT/ablation.md     the table; OUT/ablation.png: held-out loss and accuracy per rule
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradproj.attribution.selection import METHODS, select
from gradproj.core.data import FieldMap, load_pairs
from gradproj.core.errors import BadInput
from gradproj.core.plots import pyplot, save_figure
from gradproj.core.settings import Settings, at_least_one, fraction, setting
from gradproj.evaluation.runner import Continuation, HeldOut, continue_on_rules
from gradproj.evaluation.stats import mean_std, paired_difference_ci
from gradproj.pipeline.groups import group_table, group_values
from gradproj.pipeline.run import Pipeline, RunInputs, needs_if
from gradproj.core.atomic import write_json_atomic

METRICS = ("accuracy", "policy_accuracy", "mean_margin", "mean_loss")
BASELINES = ("all", "random")


def _methods(text) -> tuple[str, ...]:
    names = tuple(m.strip() for m in (text.split(",") if isinstance(text, str) else text)
                  if m.strip())
    if names == ("every",):
        return METHODS
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise BadInput(f"unknown rule {unknown[0]!r} (rules: {', '.join(METHODS)}, or every)")
    return names


@dataclass(frozen=True)
class AblateSettings(Settings):
    """Which rules to compare, how much they keep, over how many seeds."""

    methods: tuple = setting(("all", "random", "tif", "lossdiff-irm"),
                             "Comma-separated rules to compare ('every' for all of them).",
                             parse=_methods, metavar="RULES",
                             check=(lambda v: len(v) > 0, "must name at least one rule"))
    keep: float = setting(0.64, "Fraction of the scorable pairs every rule keeps.",
                          check=fraction)
    seeds: int = setting(3, "Seeds per rule (data order; and the random rule's draw).",
                         check=at_least_one)
    group_by: str | None = setting(None, "Input column to break each rule's selection down by "
                                         "(kept share and flips removed per value, seed 0).",
                                   metavar="COLUMN")
    continue_epochs: float | None = setting(None, "Epochs of each continued run (default: "
                                                  "--epochs, as for θ and θ_V).",
                                            check=(lambda v: v > 0, "must be > 0"))

    def __post_init__(self):
        super().__post_init__()
        _methods(self.methods)


def summarize(runs: list[dict], rules, metrics=METRICS, baselines=BASELINES) -> list[dict]:
    """Per rule: mean and std of each metric over seeds, and the seed-paired difference
    (mean, low, high) to each baseline that ran (t interval; NaN bounds for one seed)."""
    by = {(r["rule"], r["seed"]): r for r in runs}
    out = []
    for rule in rules:
        rs = [r for r in runs if r["rule"] == rule]
        if not rs:
            continue
        row = {"rule": rule, "n_seeds": len(rs), "kept": rs[0]["kept"]}
        for m in metrics:
            row[m], row[m + "_std"] = mean_std([r[m] for r in rs])
            for base in baselines:
                pairs = [(r[m], by[(base, r["seed"])][m]) for r in rs
                         if base != rule and (base, r["seed"]) in by]
                if pairs:
                    row[f"{m}_vs_{base}"] = paired_difference_ci(*zip(*pairs))
        out.append(row)
    return out


def interval(ci) -> str:
    """``mean [low, high]`` of a paired difference (the mean alone without an interval)."""
    mean, lo, hi = ci
    if not np.isfinite(lo):
        return f"{mean:+.3f}"
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def metric_lines(summary: list[dict]) -> list[str]:
    """One row per rule: kept, and every metric's mean ± std over seeds."""
    lines = ["| rule | kept | reward acc. | policy acc. | margin | loss |",
             "|---|---|---|---|---|---|"]
    for r in summary:
        cells = [f"{r[m]:.3f} ± {r[m + '_std']:.3f}" for m in METRICS]
        lines.append(f"| {r['rule']} | {r['kept']} | " + " | ".join(cells) + " |")
    return lines


def paired_lines(summary: list[dict]) -> list[str]:
    """Per baseline that ran: every rule's seed-paired difference of every metric to it."""
    lines = []
    for base in BASELINES:
        rows = [r for r in summary if f"mean_loss_vs_{base}" in r]
        if not rows:
            continue
        lines += ["", f"Paired difference to `{base}` (same seed), mean [95% interval]:", "",
                  "| rule | reward acc. | policy acc. | margin | loss |", "|---|---|---|---|---|"]
        lines += [f"| {r['rule']} | " + " | ".join(interval(r[f"{m}_vs_{base}"])
                                                    for m in METRICS) + " |" for r in rows]
    return lines


def ablation_lines(summary: list[dict], settings: AblateSettings, n_train: int,
                   n_test: int) -> list[str]:
    """The Markdown report: one row per rule, then the paired differences."""
    return [f"# gradproj ablate: {len(summary)} rules × {settings.seeds} seeds", "",
            f"{n_train} training pairs, keep {settings.keep}; held-out metrics on {n_test} "
            "test pairs after continuing from θ on each rule's selection (mean ± std over "
            "seeds).", "", *metric_lines(summary), *paired_lines(summary)]


def group_comparison_lines(groups: dict[str, list[dict]], column: str) -> list[str]:
    """Kept share (and flips removed, where known) per group value and rule."""
    rules = list(groups)
    first = groups[rules[0]]
    flips = "flips_removed" in first[0]
    lines = [f"## Kept share by {column} (seed 0)" + (" — flips removed in brackets" if flips
                                                       else ""), "",
             f"| {column} | pairs | " + " | ".join(rules) + " |",
             "|---|---|" + "---|" * len(rules)]
    for n, row in enumerate(first):
        cells = []
        for rule in rules:
            r = groups[rule][n]
            cell = f"{r['kept_share']:.2f}"
            if flips and r.get("flips_removed") is not None:
                cell += f" ({r['flips_removed']:.2f})"
            cells.append(cell)
        lines.append(f"| {row['group']} | {row['pairs']} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_ablation(summary: list[dict], path: Path) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    names = [r["rule"] for r in summary]
    for ax, (metric, label) in zip(axes, (("mean_loss", "held-out loss"),
                                          ("policy_accuracy", "held-out policy accuracy"))):
        ax.bar(names, [r[metric] for r in summary], yerr=[r[metric + "_std"] for r in summary],
               color="#4c72b0", capsize=3)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
    save_figure(fig, path)


def run_ablation(inputs: RunInputs, test: str, out, settings: AblateSettings = AblateSettings(),
                 *, test_split: str = "train", force: bool = False, progress: bool = True,
                 flipped=frozenset(), echo=None, loaded=None, resume: bool = False) -> dict:
    """Run (or reuse) the select pipeline in ``out``, then every rule × seed (module
    docstring); writes ablation.json, ablation.md, ablation.png and returns the record.
    ``loaded``: the base model already in memory; ``flipped``: ids of deliberately flipped
    pairs (for the flips-removed columns)."""
    test_pairs = load_pairs(test, FieldMap.parse(inputs.field), split=test_split)
    pipe = Pipeline(inputs, out, force=force, progress=progress, loaded=loaded,
                    also_check={test: test_pairs}, resume=resume)
    with pipe.released_on_failure():
        if settings.group_by:
            group_values(pipe.train, settings.group_by)     # a missing column fails before work
        table = pipe.scores(any(needs_if(m) for m in settings.methods))
    theta = pipe.theta()
    loaded = pipe.model(theta)
    cont = Continuation(loaded, HeldOut(loaded, test_pairs, inputs.pref,
                                        inputs.training.batch_size),
                        inputs.training, inputs.pref, pipe.out / "ablation-runs")
    before = cont.evaluate()

    def report(row):
        if echo is not None:
            echo(f"  {row['rule']:>13s} seed {row['seed']}: kept {row['kept']}, held-out loss "
                 f"{row['mean_loss']:.4f}, policy accuracy {row['policy_accuracy']:.3f}")

    runs = continue_on_rules(cont, table, pipe.train, settings.methods, settings.keep,
                             seeds=range(settings.seeds), flipped=flipped,
                             epochs=settings.continue_epochs, on_row=report)
    cont.reset()
    summary = summarize(runs, settings.methods)
    record = {"settings": settings.to_dict(), "inputs": inputs.to_dict(), "test": test,
              "test_split": test_split, "n_train": len(pipe.train), "n_test": len(test_pairs),
              "objective": pipe.objective.settings(), "theta": before.to_dict(),
              "computed": pipe.stages, "runs": runs, "summary": summary}
    write_json_atomic(pipe.out / "ablation.json", record)
    lines = ablation_lines(summary, settings, len(pipe.train), len(test_pairs))
    lines += ["", f"θ itself (before continuing): loss {before.mean_loss:.4f}, policy accuracy "
                  f"{before.policy_accuracy:.3f}, reward accuracy {before.accuracy:.3f}.", "",
              "![held-out loss and accuracy per rule](ablation.png)", ""]
    if settings.group_by:
        record["groups"] = {rule: group_table(pipe.train, table, select(
            table, rule, settings.keep, seed=0), settings.group_by) for rule in settings.methods}
        lines += group_comparison_lines(record["groups"], settings.group_by)
    (pipe.out / "ablation.md").write_text("\n".join(lines))
    plot_ablation(summary, pipe.out / "ablation.png")
    return record


def read_ablation(out) -> dict:
    path = Path(out) / "ablation.json"
    if not path.is_file():
        raise BadInput(f"{out}: no ablation.json (run gradproj ablate into this folder)")
    return json.loads(path.read_text())
