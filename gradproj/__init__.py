"""gradproj: which preference pairs are worth aligning a model on.

Truncated influence (TIF), LossDiff and IRM (Zhang et al., ICLR 2026) over a store of
randomly projected per-pair LoRA gradients of a preference objective (DPO, IPO, SLiC, SimPO).

The public API is importable from here (``from gradproj import load_pairs, train_adapter``);
each name is imported from its layer on first use, so ``import gradproj`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_API = {
    # core: data, models, objectives, settings, errors
    "gradproj.core.data": ("PreferencePair", "DataSettings", "FieldMap", "load_pairs",
                           "write_pairs_jsonl"),
    "gradproj.core.model": ("ModelSettings", "LoraSettings", "LoadedModel", "load_model"),
    "gradproj.core.tokens": ("tokenize_pairs",),
    "gradproj.core.logprobs": ("PairLogProbs", "pair_logprobs"),
    "gradproj.core.objectives": ("Objective", "DPO", "IPO", "SLiC", "SimPO", "OBJECTIVES",
                                 "PreferenceSettings", "make_objective", "register"),
    "gradproj.core.settings": ("Settings", "setting"),
    "gradproj.core.errors": ("GradprojError", "BadInput", "InputError", "IncompatibleStore",
                             "CorruptStore"),
    # training
    "gradproj.training.train": ("TrainSettings", "train_adapter"),
    "gradproj.training.evaluate": ("evaluate", "EvalResult"),
    # gradients
    "gradproj.gradients.perpair": ("PerPairGradients",),
    "gradproj.projection.factory": ("make_projector",),
    # store
    "gradproj.store.build": ("StoreSettings", "build_store"),
    "gradproj.store.shards": ("Store", "merge_stores"),
    "gradproj.store.index": ("IndexSettings",),
    # attribution
    "gradproj.attribution.influence": ("InfluenceSettings", "compute_influence",
                                       "write_influence"),
    "gradproj.attribution.scores": ("ScoreTable", "score_pairs"),
    "gradproj.attribution.selection": ("Selection", "select"),
    # pipeline
    "gradproj.pipeline.run": ("RunInputs", "SelectSettings", "Pipeline", "run_select"),
    "gradproj.pipeline.compare": ("compare_dirs",),
    "gradproj.pipeline.outputs": ("load_selection", "write_selection_outputs"),
    "gradproj.evaluation.ablate": ("AblateSettings", "run_ablation"),
}
_WHERE = {name: module for module, names in _API.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'gradproj' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
