"""Figures of the benchmarks (matplotlib, Agg): the LDS against k and the subset losses
(bench_lds), held-out accuracy, flips removed and AUROC per rule (bench_select), query time and
memory against the store size (bench_query), projection fidelity and speed against k
(bench_projection), the losses after every step of a continued run (bench_dynamics). Each
takes the results as written to JSON (or the rows behind them) and writes a PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.harness.noise import SCORES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


# ------------------------------------------------------------------------------ LDS

def lds_plot(path: Path, rows: list[dict], sums: np.ndarray, losses: np.ndarray,
             flips: np.ndarray, repeats: dict[int, list[float]], exact_row: dict, floor: dict,
             title: str) -> None:
    """bench_lds: the LDS of every store variant against k, with the exact row, the seed-mean
    LDS and the noise ceiling; and the exact Σ IF of every subset against its loss."""
    plt = _pyplot()

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    ex = exact_row
    ax.axhline(ex["lds"], color="k", lw=1.5, label=f"exact (unprojected) {ex['lds']:.3f}")
    ax.axhspan(ex["ci_low"], ex["ci_high"], color="k", alpha=0.08)
    if "lds_seed_mean" in ex:
        ax.axhline(ex["lds_seed_mean"], color="k", ls="--", lw=1,
                   label=f"exact vs loss averaged over {floor.get('seeds_per_subset', '?')} "
                         f"data-order seeds {ex['lds_seed_mean']:.3f}")
    if "ceiling" in floor:
        ax.axhline(floor["ceiling"], color="gray", ls=":", label=f"noise ceiling "
                                                                 f"{floor['ceiling']:.2f}")
    markers = {"rademacher": "o", "sjlt": "s", "gaussian": "^"}
    for (variant, gt), group in _groups(rows).items():
        pts = sorted((r["k"], r["lds"], r["ci_low"], r["ci_high"]) for r in group
                     if r["proj_seed"] == group[0]["proj_seed"])
        ks, lds, lo, hi = (np.array(v) for v in zip(*pts, strict=True))
        kind = variant.split()[-1]
        ks = ks * {"sjlt": 1.08, "gaussian": 0.93}.get(kind, 1.0)   # side by side at one k
        style = "-" if gt == "sgd" else "--"
        label = f"store {kind}" + (" (adam)" if gt == "adam" else "")
        line = ax.errorbar(ks, lds, yerr=[lds - lo, hi - lds], marker=markers.get(kind, "o"),
                           ls=style if len(ks) > 1 else "none", capsize=3, label=label)
        others = [(r["k"], r["lds"]) for r in group if r["proj_seed"] != group[0]["proj_seed"]]
        if others:
            ax.scatter(*zip(*others, strict=True), s=12, color=line[0].get_color(), alpha=0.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (projected dimension); small dots: other projection seeds")
    ax.set_ylabel("LDS = Spearman(Σ IF, −val loss)")
    ax.set_title("LDS vs k (95 % bootstrap CI over subsets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)

    for s, v in repeats.items():
        if v:
            vals = [losses[s]] + list(v)
            bx.plot([sums[s]] * 2, [min(vals), max(vals)], color="r", lw=1, alpha=0.35,
                    zorder=1)
    sc = bx.scatter(sums, losses, c=flips, cmap="viridis", s=22, zorder=2)
    fig.colorbar(sc, ax=bx, label="flipped pairs in subset")
    bx.set_xlabel("Σ_subset IF (exact gradients)")
    bx.set_ylabel("validation DPO loss after retraining")
    bx.set_title(f"exact: LDS {ex['lds']:.3f}; red bars: min–max over data-order seeds",
                 fontsize=10)
    bx.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def _groups(rows):
    out: dict = {}
    for r in rows:
        if r["variant"].startswith("store"):
            out.setdefault((r["variant"], r["grad_type"]), []).append(r)
    return out


# ------------------------------------------------------------------------------ selection

def select_plot(res: dict, path: Path) -> None:
    """bench_select's results: held-out accuracy and flips removed per rule, and the AUROC of
    every score at every noise rate (when the results have them)."""
    plt = _pyplot()

    rules = res["rules"]
    names = [r["rule"] for r in rules]
    x = np.arange(len(names))
    noise = res.get("noise") or {}
    fig, axes = plt.subplots(1, 3 if noise else 2, figsize=(19 if noise else 13, 4.6))
    ax1, ax2 = axes[0], axes[1]
    if noise:
        ax3, keys = axes[2], sorted(noise)
        xs, w3 = np.arange(len(SCORES)), 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [noise[key]["auroc_clean_vs_flipped"][c] for c in SCORES]
            ax3.bar(xs + (j - (len(keys) - 1) / 2) * w3, vals, w3,
                    label=f"{noise[key]['flip']:.0%} flipped")
        ax3.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax3.set_xticks(xs, [{"if": "IF", "lossdiff": "LossDiff", "irm": "IRM"}[c]
                            for c in SCORES])
        ax3.set_ylim(0, 1.05)
        ax3.set_title("AUROC of each score, clean vs flipped training pairs", fontsize=10)
        ax3.legend(fontsize=8)
    w = 0.38
    ax1.bar(x - w / 2, [r["policy_accuracy"] for r in rules], w,
            yerr=[r["policy_accuracy_std"] for r in rules], capsize=3,
            label="policy acc (log π(y_w) > log π(y_l))", color="#4C72B0")
    ax1.bar(x + w / 2, [r["accuracy"] for r in rules], w,
            yerr=[r["accuracy_std"] for r in rules], capsize=3, label="reward acc (h > 0)",
            color="#DD8452")
    ax1.axhline(res["theta"]["policy_accuracy"], color="#4C72B0", ls="--", lw=1,
                label="θ policy acc")
    ax1.axhline(res["theta"]["accuracy"], color="#DD8452", ls="--", lw=1, label="θ reward acc")
    ax1.axhline(res["base"]["policy_accuracy"], color="grey", ls=":", lw=1,
                label="base policy acc")
    ax1.set_xticks(x, names, rotation=20)
    ax1.set_ylim(0, 1.18)
    n_seeds = len(res["settings"]["seeds"])
    ax1.set_title(f"held-out accuracy after continued DPO from θ "
                  f"({res['task']['n_test']} test pairs, {n_seeds} seed(s), ±std)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper center", ncol=3)
    ax2.bar(x, [r["flips_removed"] for r in rules],
            yerr=[r["flips_removed_std"] for r in rules], capsize=3, color="#55A868")
    ax2.axhline(1 - res["settings"]["keep"], color="grey", ls=":", lw=1,
                label=f"chance (1 − keep = {1 - res['settings']['keep']:.2f})")
    for i, r in enumerate(rules):
        ax2.text(i, r["flips_removed"] + 0.02, f"{r['flips_removed']:.0%}", ha="center",
                 fontsize=8)
    ax2.set_xticks(x, names, rotation=20)
    ax2.set_ylim(0, 1.1)
    ax2.set_title(f"share of the {res['task']['n_flipped']} flipped training pairs removed "
                  f"(keep {res['settings']['keep']:.2f})", fontsize=10)
    ax2.legend(fontsize=8)
    m = res["machine"]
    fig.suptitle(f"bench_select: SmolLM2-135M, {res.get('settings', {}).get('data', 'synthetic')}"
                 f" data, {res['task']['n_train']} train pairs, "
                 f"commit {m['commit']}, {m['date'][:10]}", fontsize=10)
    _save(fig, path)


# ------------------------------------------------------------------------------ query cost

def query_plot(results: dict, path: Path) -> None:
    """bench_query's synthetic part: query seconds (warm and cold) and peak memory against N,
    with the bandwidth and matmul limits."""
    K, M = results["k"], results["M"]
    plt = _pyplot()

    lim = results["limits"]
    syn = results["synthetic"]
    ns = np.array([e["n"] for e in syn], float)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    ax.plot(ns, [e["queries"]["mean"]["warm_median"] for e in syn], "o-", color="C0",
            label="mean_influence (warm median)")
    ax.plot(ns, [e["queries"]["mean"]["first"] for e in syn], "x", ms=9, color="C0",
            label="mean_influence, cold first pass")
    ax.plot(ns, [e["queries"]["mean_ref"]["warm_median"] for e in syn], "s--", color="C2",
            label="reference (not gradproj): torch cast\ninto a reused buffer, 1 thread")
    if all("mean_numpy" in e["queries"] for e in syn):
        ax.plot(ns, [e["queries"]["mean_numpy"]["warm_median"] for e in syn], "d--",
                color="C3", label="reference: plain NumPy block @ v")
    ax.plot(ns, ns * K * 2 / lim["bandwidth"], "k:", label="bandwidth limit (store bytes / BW)")
    ax.set(xscale="log", yscale="log", xlabel="N rows (k = 8192)", ylabel="seconds",
           title="one influence query (mean vector)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for qn, color, name in (("matvec", "C0", "stream_matvec"), ("topk", "C1", "stream_topk")):
        ax.plot(ns, [e["queries"][qn]["warm_median"] for e in syn], "o-", color=color,
                label=f"{name}, M={M} (warm median)")
        ax.plot(ns, [e["queries"][qn]["first"] for e in syn], "x", ms=9, color=color,
                label=f"{name}, cold first pass")
    ax.plot(ns, 2 * ns * K * M / lim["matmul_flops"], "k:", label="matmul FLOP/s limit")
    ax.plot(ns, ns * K * 2 / lim["bandwidth"], "k-.", lw=0.8, label="bandwidth limit")
    ax.set(xscale="log", yscale="log", xlabel="N rows (k = 8192)", ylabel="seconds",
           title=f"per-pair query (M = {M})")
    ax.legend(fontsize=8)
    ax = axes[2]
    for qn, color in (("mean", "C0"), ("matvec", "C1"), ("topk", "C2"), ("mean_ref", "C3")):
        r = [e["queries"][qn] for e in syn]
        name = qn if qn != "mean_ref" else "mean reference"
        ax.plot(ns, [(x["peak_rss_increase"] or 0) / 2**20 for x in r], "o-", color=color,
                label=f"{name}: peak RSS increase")
        ax.plot(ns, [x["peak_anon_increase"] / 2**20 for x in r], "x--", color=color,
                label=f"{name}: peak anonymous increase")
    ax.plot(ns, ns * M * 4 / 2**20, "k:", lw=0.8, label=f"[N, {M}] float32 output of matvec")
    ax.set(xscale="log", xlabel="N rows", ylabel="MiB", ylim=(0, None),
           title="peak memory during the query")
    ax.legend(fontsize=7)
    machine = results["machine"]         # results written before the key's rename say "cpu"
    fig.suptitle(f"gradproj query benchmark — {machine.get('cpu_model', machine.get('cpu'))}, "
                 f"{machine['nproc']} cores, commit {machine['commit']}")
    _save(fig, path, dpi=110)



# ------------------------------------------------------------------------------ projection

def projection_plot(path: Path, fid_rows, speed_rows, fid_ks, ks) -> None:
    """bench_projection: Spearman against k per kind (mean ± std over seeds) and, when there
    are speed rows, seconds per call against k per variant."""
    plt = _pyplot()

    fig, axes = plt.subplots(1, 2 if speed_rows else 1, figsize=(11 if speed_rows else 6, 4.2),
                             squeeze=False)
    ax = axes[0][0]
    for kind in dict.fromkeys(r["kind"] for r in fid_rows):
        pts = sorted((r["k"], r["spearman"], r.get("spearman_std", 0.0)) for r in fid_rows
                     if r["kind"] == kind)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=kind)
    ax.set_xscale("log", base=2)
    ax.set_xticks(fid_ks, [str(k) for k in fid_ks])
    ax.set_xlabel("k (projected dimension)")
    ax.set_ylabel("Spearman(exact g·v, projected)")
    ax.set_title("Fidelity over SmolLM2 LoRA gradients")
    ax.grid(alpha=0.3)
    ax.legend()
    if speed_rows:
        ax = axes[0][1]
        for name in dict.fromkeys(r["variant"] for r in speed_rows):
            pts = sorted((r["k"], r["median_seconds"]) for r in speed_rows
                         if r["variant"] == name)
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel("seconds per call (median)")
        ax.set_title("Projection of 64 × P=460800 on CPU")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    _save(fig, path)



# ------------------------------------------------------------------------------ dynamics

def dynamics_plot(runs: list[dict], path: Path) -> None:
    """bench_dynamics: per data-order seed, the held-out loss after every step of a run
    continued from θ on every pair (left), and the loss on the flipped and the clean training
    probes (right)."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    for run in runs:
        steps = [p["step"] for p in run["steps"]]
        line, = ax.plot(steps, [p["heldout"]["loss"] for p in run["steps"]], marker=".",
                        label=f"seed {run['seed']}")
        for probe, style in (("flipped", "-"), ("clean", "--")):
            if probe in run["steps"][0]:
                bx.plot(steps, [p[probe]["loss"] for p in run["steps"]], ls=style,
                        color=line.get_color(), label=f"seed {run['seed']}: {probe}")
    ax.axhline(float(np.log(2)), color="grey", lw=0.8, ls=":")
    ax.set(xlabel="optimizer step (0 = θ)", ylabel="held-out DPO loss",
           title="continuing from θ on every pair")
    bx.set(xlabel="optimizer step (0 = θ)", ylabel="DPO loss on training pairs (as labelled)",
           title="flipped (solid) and clean (dashed) training pairs")
    for a in (ax, bx):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    _save(fig, Path(path))
