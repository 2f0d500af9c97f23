"""The paper's scoring stages, each timed: θ, θ_V, IRM + LossDiff, the store at θ, IF — then
the scores' statistics, and what answering a second validation set costs once θ exists.

1. θ: ``training`` on the training pairs from a fresh adapter;
2. θ_V: ``aux_epochs`` (default: the training epochs) on the validation pairs, from θ;
3. IRM and LossDiff (forward passes), 4. the gradient store at θ, 5. validation gradients and
   IF / TIF — 3 to 5 through :class:`gradproj.pipeline.run.Pipeline` (what ``gradproj select``
   runs) with θ and θ_V given, the store built here first so that its time is its own.

Folder: ``work/{train,val}.jsonl``, ``work/theta``, ``work/theta_v``, ``work/select`` (the
pipeline's folder: scores.parquet, store/, influence/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from gradproj.attribution.influence import InfluenceSettings
from gradproj.attribution.scores import ScoreTable
from gradproj.core.data import PreferencePair, write_pairs_jsonl
from gradproj.core.errors import GradprojError
from gradproj.core.model import LoadedModel, reattach
from gradproj.core.objectives import PreferenceSettings
from gradproj.pipeline.run import Pipeline, RunInputs
from gradproj.store.build import StoreSettings, build_store
from gradproj.training.train import TrainSettings, train_adapter

STAGES = ("warm-up θ", "auxiliary θ_V", "scores (IRM + LossDiff)", "store build",
          "IF (val gradients + query)")


@dataclass
class Scored:
    theta: str
    theta_v: str
    table: ScoreTable
    """irm, loss_theta, lossdiff, … and if, tif per training pair."""
    store: Path
    loaded: LoadedModel
    """The model with θ active."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Stage (:data:`STAGES`) → wall seconds."""


def score_run(loaded: LoadedModel, train: list[PreferencePair], val: list[PreferencePair],
              work: str | Path, training: TrainSettings, store: StoreSettings,
              pref: PreferenceSettings = PreferenceSettings(), *,
              aux_epochs: float | None = None, tif_band=(0.20, 0.84),
              log: Callable[[str], None] | None = None) -> Scored:
    """Run the stages of the module docstring; ``log`` gets one line per finished stage."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    for name, pairs in (("train", train), ("val", val)):
        write_pairs_jsonl(pairs, work / f"{name}.jsonl")
    seconds: dict[str, float] = {}

    def timed(stage: str, fn):
        t = time.perf_counter()
        out = fn()
        seconds[stage] = time.perf_counter() - t
        if log is not None:
            log(f"{stage}: {seconds[stage]:.0f}s")
        return out

    theta, theta_v = work / "theta", work / "theta_v"
    fresh = reattach(loaded, None)
    timed(STAGES[0], lambda: train_adapter(fresh, train, training, theta, pref=pref,
                                           overwrite=True, progress=False))
    model = reattach(fresh, str(theta))
    aux = training if aux_epochs is None else replace(training, epochs=aux_epochs)
    timed(STAGES[1], lambda: train_adapter(model, val, aux, theta_v, pref=pref, overwrite=True,
                                           progress=False))
    model = reattach(model, str(theta))
    inputs = RunInputs(model=model.settings, train=str(work / "train.jsonl"),
                       val=str(work / "val.jsonl"), adapter=str(theta), aux_adapter=str(theta_v),
                       training=training, store=store, pref=pref,
                       influence=InfluenceSettings(tif_band=tuple(tif_band)))
    pipe = Pipeline(inputs, work / "select", force=True, progress=False, loaded=model)
    timed(STAGES[2], lambda: pipe.scores(need_if=False))
    timed(STAGES[3], lambda: build_store(model, train, store, work / "select" / "store",
                                         pref=pref, progress=False))
    table = timed(STAGES[4], lambda: pipe.scores(need_if=True))
    if "store" in pipe.stages:
        raise GradprojError(f"{work / 'select'}: the pipeline rebuilt the store built here")
    return Scored(str(theta), str(theta_v), table, work / "select" / "store", pipe.loaded,
                  seconds)


def score_statistics(table: ScoreTable, flipped) -> dict:
    """How LossDiff and IRM relate to IF and to the flipped pairs: ``correlations`` (Pearson
    with a Fisher 95% interval, and Spearman, of each with IF; of LossDiff with IRM),
    ``auroc_clean_vs_flipped`` per score and ``per_task_auroc`` (benchmarks.harness.noise)."""
    import numpy as np

    from benchmarks.harness.noise import SCORES, auroc_clean_vs_flipped, per_task_auroc
    from benchmarks.harness.stats import fisher_ci
    from gradproj.evaluation.stats import pearson, spearman

    is_flip = np.array([i in flipped for i in table.ids])
    cols = {c: np.asarray(table[c], float) for c in SCORES}
    n = int(np.isfinite(cols["if"]).sum())
    corr = {}
    for c in ("lossdiff", "irm"):
        r = pearson(cols[c], cols["if"])
        corr[c] = {"pearson_if": r, "pearson_if_ci95": fisher_ci(r, n),
                   "spearman_if": spearman(cols[c], cols["if"])}
    corr["lossdiff_irm"] = {"pearson": pearson(cols["lossdiff"], cols["irm"]),
                            "spearman": spearman(cols["lossdiff"], cols["irm"])}
    return {"is_flip": is_flip, "cols": cols, "correlations": corr,
            "auroc_clean_vs_flipped": auroc_clean_vs_flipped(cols, is_flip),
            "per_task_auroc": per_task_auroc(table.ids, cols, is_flip)}


def second_query_cost(scored: Scored, train: list[PreferencePair], val2: list[PreferencePair],
                      training: TrainSettings, pref: PreferenceSettings,
                      aux_epochs: float | None = None) -> dict:
    """Seconds to answer a second, new validation set ``val2`` once θ exists, three ways: from
    the store (val2 gradients + lookup); by LossDiff (a new θ_V from θ on val2, then forward
    passes over every training pair); IF without a store (the store build + the store answer);
    their ratios, and Spearman(IF on val2, LossDiff on val2). Also the model handle to go on
    with (``scored.loaded`` is used up)."""
    from gradproj.attribution.influence import InfluenceSettings, compute_influence
    from gradproj.attribution.scores import score_pairs
    from gradproj.evaluation.stats import spearman
    from gradproj.store.shards import Store

    model = reattach(scored.loaded, scored.theta)
    t = time.perf_counter()
    inf = compute_influence([Store(scored.store)], val2, InfluenceSettings(top_k=0),
                            loaded=[model])
    store_s = time.perf_counter() - t
    t = time.perf_counter()
    aux2 = Path(scored.theta).parent / "theta_v2"
    aux = training if aux_epochs is None else replace(training, epochs=aux_epochs)
    train_adapter(model, val2, aux, aux2, pref=pref, overwrite=True, progress=False)
    aux_s = time.perf_counter() - t
    model = reattach(model, scored.theta)
    t = time.perf_counter()
    table = score_pairs(model, train, str(aux2), pref, batch_size=training.batch_size)
    fwd_s = time.perf_counter() - t
    build_s, lossdiff_s = scored.seconds["store build"], aux_s + fwd_s
    return {"n_train": len(train), "n_val2": len(val2),
            "store_answer_s": store_s, "store_answer_split_s": inf.seconds,
            "lossdiff_answer_s": lossdiff_s, "lossdiff_aux_training_s": aux_s,
            "lossdiff_forward_s": fwd_s, "if_without_store_s": build_s + store_s,
            "ratio_lossdiff_to_store": lossdiff_s / store_s,
            "ratio_if_without_store_to_lossdiff": (build_s + store_s) / lossdiff_s,
            "ratio_if_without_store_to_store": (build_s + store_s) / store_s,
            "spearman_if_val2_lossdiff_val2": spearman(inf.scores, table["lossdiff"])}, model
