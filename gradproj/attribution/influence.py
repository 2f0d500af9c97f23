"""Influence of every stored training pair on a new validation set, and truncated influence.

    IF(d) = ⟨g_d, ḡ_V⟩,   ḡ_V = (1/M) Σ_{v∈V} g_v          (identity Hessian, TracIn/LESS style)

g are projected gradients of the DPO loss over the LoRA parameters at the store's adapter; the
projection preserves inner products in expectation. IF > 0: a gradient step on d lowers the
validation loss (helpful). ``normalize`` uses the cosine ⟨g_d, ḡ_V⟩ / (‖g_d‖ ‖ḡ_V‖). Several
stores built at different checkpoints give TracIn: Σ_c w_c · IF_c(d), w_c the learning rates.

Truncated influence: TIF(d) = 1[δ_low < IF(d) < δ_high], δ the ``tif_band`` quantiles of IF
over the training set. The default band (0.20, 0.84) drops the lowest 20% (negative influence:
mislabelled or noisy pairs) and the highest 16% (pairs that fit the validation proxy too
closely), keeping 64% — the keep fraction of the paper's best LossDiff-IRM runs, so the TIF and
LossDiff-IRM selections are compared at equal size.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gradproj.store.build import FeatureComputer, manifest_settings, store_header
from gradproj.core.atomic import atomic_path, write_atomic
from gradproj.core.data import PreferencePair
from gradproj.core.errors import GradprojError, IncompatibleStore
from gradproj.core.settings import Settings, band, non_negative, parse_floats, positive, setting
from gradproj.store.index import (
    IndexSettings,
    load_or_build_index,
    search,
    search_refined,
    stream_extremes,
    stream_matvec,
    valid_rows,
)
from gradproj.core.model import LoadedModel, LoraSettings, ModelSettings, load_model
from gradproj.projection.spec import ProjectorSpec
from gradproj.store.manifest import SPEC_FIELDS, STATUS
from gradproj.store.shards import Store



@dataclass(frozen=True)
class InfluenceSettings(Settings):
    """How IF is computed and reported for a validation set."""

    tif_band: tuple = setting((0.20, 0.84), "Quantiles LOW,HIGH of IF; TIF keeps the pairs "
                                            "strictly between them.", parse=parse_floats,
                              check=band, metavar="LOW,HIGH")
    top_k: int = setting(10, "Most helpful and most harmful training pairs reported per "
                             "validation pair (0: none).", check=non_negative)
    normalize: bool = setting(False, "Cosine instead of the raw inner product.")
    index: IndexSettings = setting(default_factory=IndexSettings, option="")
    block_rows: int | None = setting(None, "Rows of the store converted to float32 at a time by "
                                           "the streaming path (default: 8 MiB worth).",
                                     cli=False)
    memory_budget_mb: float = setting(4096.0, "A flat FAISS index is used for top-k only when "
                                              "the store's fp32 features fit in this.",
                                      check=positive, cli=False)


@dataclass
class ValidationFeatures:
    ids: list[str]
    features: np.ndarray          # [M, k] float32, finite rows only
    excluded: dict[str, str]      # val id → why it was not used


@dataclass
class InfluenceResult:
    ids: list[str]
    scores: np.ndarray            # [N] IF (NaN for rows whose gradient was non-finite)
    tif: np.ndarray               # [N] bool
    deltas: tuple[float, float]
    val_ids: list[str]
    topk: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rank(self) -> np.ndarray:
        """1 = most helpful; NaN scores rank last."""
        order = np.argsort(-np.nan_to_num(self.scores, nan=-np.inf), kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        return rank

    @property
    def percentile(self) -> np.ndarray:
        """Share of the other finite scores below this one, in [0, 1] (NaN for NaN scores)."""
        finite = np.isfinite(self.scores)
        n = int(finite.sum())
        out = np.full(len(self.scores), np.nan)
        order = np.argsort(self.scores[finite], kind="stable")
        pct = np.empty(n)
        pct[order] = np.arange(n) / max(n - 1, 1)
        out[finite] = pct
        return out


def check_compatible(store: Store, header: dict) -> None:
    """Refuse a query whose model, adapter, tokenizer, loss, gradient type or projector differ
    from the store's, naming the first field that differs."""
    m = store.manifest
    for key in SPEC_FIELDS:
        if key == "projector":
            diff = ProjectorSpec.from_dict(m[key]).diff(ProjectorSpec.from_dict(header[key]))
            if diff:
                raise IncompatibleStore(f"{store.root}: query differs from the store in field "
                                    f"'projector.{diff[0]}'")
            continue
        mine, theirs = json.loads(json.dumps(header[key])), m.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            for sub in mine:   # same weights from another path or alias; the adapter fingerprint
                # covers the LoRA settings
                if sub not in ("path", "name", "lora") and mine[sub] != theirs.get(sub):
                    raise IncompatibleStore(f"{store.root}: query differs from the store in field "
                                        f"'{key}.{sub}' (store {theirs.get(sub)!r}, query "
                                        f"{mine[sub]!r})")
        elif mine != theirs:
            raise IncompatibleStore(f"{store.root}: query differs from the store in field '{key}' "
                                f"(store {theirs!r}, query {mine!r})")


def load_store_model(store: Store, device: str = "auto") -> LoadedModel:
    """The model and adapter a store was built with, as its manifest names them."""
    m = store.manifest
    lora = LoraSettings(**{**m["model"]["lora"], "targets": tuple(m["model"]["lora"]["targets"])}
                        ) if m["model"]["lora"] else LoraSettings()
    return load_model(ModelSettings(model=m["model"]["name"], adapter=m["adapter"]["path"],
                                    lora=lora, dtype=m["model"]["dtype"], device=device))


def validation_features(store: Store, loaded: LoadedModel,
                        val_pairs: list[PreferencePair]) -> ValidationFeatures:
    """Projected gradients of each validation pair's loss, with the store's own settings and
    spec; refused (naming the field) when the model or settings differ from the store's.

    Validation gradients are always plain gradients, also for a ``grad_type="adam"`` store: as
    in LESS, only the training side is Adam-preconditioned, ⟨Γ(g_d), g_v⟩. Preconditioning the
    query too would add the warm-up's momentum term β1·m/(√v' + ε) — the same for every
    validation pair — to each of them, and ḡ_V would point along θ's own last update instead of
    the validation gradient (measured on a tiny model: LDS 0.17 against 0.59 for the LESS form;
    the row "exact adam·sgd" of docs/benchmarks/bench_lds.md is the LESS form).
    """
    settings, pref = manifest_settings(store.manifest)
    computer = FeatureComputer(loaded, replace(settings, grad_type="sgd"), pref.objective())
    try:
        check_compatible(store, store_header(loaded, settings, pref,
                                             computer.projector.spec.to_dict(), ""))
        tok = pref.tokenize(val_pairs, loaded.tokenizer)
        if not tok.pairs:
            raise GradprojError("no validation pair left after tokenization")
        feats, rows = computer.features(tok.pairs, dtype=np.float32)
    finally:
        computer.close()
    ok = rows["status"] == STATUS["ok"]
    excluded = dict(tok.excluded)
    excluded.update({i: "non-finite gradient" for i in rows["id"][~ok].tolist()})
    if not ok.any():
        raise GradprojError("every validation pair has a non-finite gradient")
    return ValidationFeatures(rows["id"][ok].tolist(), feats[ok], excluded)


def mean_influence(store: Store, val: ValidationFeatures, normalize: bool = False,
                   block_rows: int | None = None) -> np.ndarray:
    """IF(d) = ⟨g_d, ḡ_V⟩ for every row (or the cosine), [N] fp32; NaN where non-finite."""
    gbar = val.features.astype(np.float64).mean(0).astype(np.float32)
    scale = None
    if normalize:
        norm, gnorm = store.column("norm"), float(np.linalg.norm(gbar))
        denom = norm * gnorm
        scale = np.divide(1.0, denom, out=np.zeros_like(norm), where=denom > 0)
    scores = stream_matvec(store, gbar[:, None], block_rows, row_scale=scale)[:, 0]
    scores[~valid_rows(store)] = np.nan
    return scores


def tif_mask(scores: np.ndarray, band=(0.20, 0.84)) -> tuple[np.ndarray, tuple[float, float]]:
    """TIF(d) = 1[δ_low < IF(d) < δ_high] with δ the ``band`` quantiles of the finite IFs."""
    finite = np.isfinite(scores)
    if not finite.any():
        raise GradprojError("no finite influence score to truncate")
    lo, hi = (float(x) for x in np.quantile(scores[finite], band))
    with np.errstate(invalid="ignore"):
        return finite & (scores > lo) & (scores < hi), (lo, hi)


def top_influences(store: Store, val: ValidationFeatures, settings: InfluenceSettings) -> list:
    """For each validation pair: its ``top_k`` most helpful and most harmful training rows.

    Rows whose gradient was non-finite (stored as zeros) are never listed. The exact streaming
    path reads the store once for both lists; it is used for cosine scores and for a flat index
    whose float32 copy would not fit ``memory_budget_mb``.
    """
    valid = valid_rows(store)
    k = min(settings.top_k, int(valid.sum()))
    if k == 0:
        return []
    q = val.features
    fits = len(store) * store.k * 4 <= settings.memory_budget_mb * 2**20
    if settings.normalize or (settings.index.kind == "flat" and not fits):
        scale = None
        if settings.normalize:   # cosine: unit queries, rows scaled by 1/‖g_d‖ (0 for ‖g_d‖ = 0)
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
            norm = store.column("norm")
            scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        found = stream_extremes(store, q, k, settings.block_rows, valid=valid, row_scale=scale)
        (hs, hi), (ls, li) = found["high"], found["low"]
    else:
        index = load_or_build_index(store, settings.index)     # holds the valid rows only
        if settings.index.kind == "ivf-pq" and settings.index.refine > 1:
            hs, hi = search_refined(index, store, q, k, settings.index.refine)
            ls, li = search_refined(index, store, -q, k, settings.index.refine)
        else:
            hs, hi = search(index, q, k)
            ls, li = search(index, -q, k)
        ls = -ls
    ids = store.ids()

    def listed(scores, rows):
        keep = [(float(s), int(j)) for s, j in zip(scores, rows)
                if j >= 0 and valid[j] and np.isfinite(s)][:k]
        return [{"id": ids[j], "score": s} for s, j in keep]

    return [{"val_id": vid, "helpful": listed(hs[m], hi[m]), "harmful": listed(ls[m], li[m])}
            for m, vid in enumerate(val.ids)]


def compute_influence(stores: list[Store], val_pairs: list[PreferencePair],
                      settings: InfluenceSettings = InfluenceSettings(),
                      weights: list[float] | None = None, device: str = "auto",
                      loaded: list[LoadedModel] | None = None) -> InfluenceResult:
    """IF of every training pair (summed over ``stores`` with ``weights``: TracIn), TIF, top-k.

    The stores must hold the same pairs in the same order; top-k uses the first store.
    """
    weights = weights or [1.0] * len(stores)
    if len(weights) != len(stores):
        raise GradprojError(f"{len(weights)} weights for {len(stores)} stores")
    ids = stores[0].ids()
    for st in stores[1:]:
        if st.ids() != ids:
            raise GradprojError(f"{st.root}: holds other pairs than {stores[0].root}")
    seconds = {"validation_gradients": 0.0, "lookup": 0.0}
    total, first_val, topk = None, None, []
    for c, (store, w) in enumerate(zip(stores, weights)):
        t = time.perf_counter()
        model = loaded[c] if loaded else load_store_model(store, device)
        val = validation_features(store, model, val_pairs)
        seconds["validation_gradients"] += time.perf_counter() - t
        t = time.perf_counter()
        scores = w * mean_influence(store, val, settings.normalize, settings.block_rows)
        total = scores if total is None else total + scores
        if c == 0:
            first_val = val
            topk = top_influences(store, val, settings)
        seconds["lookup"] += time.perf_counter() - t
    mask, deltas = tif_mask(total, settings.tif_band)
    return InfluenceResult(ids, total, mask, deltas, first_val.ids, topk, seconds)


def write_influence(result: InfluenceResult, out_dir, extra: dict | None = None) -> dict:
    """DIR/influence.parquet (id, if, rank, percentile, tif), DIR/topk.jsonl, DIR/summary.json,
    each written to a temporary name and renamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": result.ids, "if": result.scores.astype(np.float64),
                      "rank": result.rank, "percentile": result.percentile, "tif": result.tif})
    with atomic_path(out / "influence.parquet") as tmp:
        pq.write_table(table, tmp)
    write_atomic(out / "topk.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                             for row in result.topk))
    summary = {"n_train": len(result.ids), "n_val": len(result.val_ids),
               "tif_kept": int(result.tif.sum()), "deltas": list(result.deltas),
               "n_nonfinite": int((~np.isfinite(result.scores)).sum()),
               "seconds": result.seconds, **(extra or {})}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary
