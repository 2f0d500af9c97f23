"""Scores of training pairs: IRM, LossDiff (and IF/TIF from gradproj.influence), one table.

    IRM(d)      = m_θ(d), the objective's margin (DPO: β[(log π_θ(y_w|x) − log π_ref(y_w|x))
                  − (log π_θ(y_l|x) − log π_ref(y_l|x))]; see gradproj.core.objectives)
    LossDiff(d) = ℓ(θ; d) − ℓ(θ_V; d)        θ_V: θ trained one more epoch on the validation pairs

Both need forward passes only; the reference log-probs are computed once and reused for θ and
θ_V. With a store built at θ, IRM comes free from its saved log-probs. LossDiff > 0 means the
validation-tuned model fits d better than θ does (first order: LossDiff ≈ η·IF).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradproj.core.atomic import atomic_path
from gradproj.core.data import PreferencePair
from gradproj.core.logprobs import PairLogProbs, pair_logprobs, response_logprobs
from gradproj.core.errors import GradprojError
from gradproj.core.model import LoadedModel
from gradproj.core.objectives import Objective, PreferenceSettings
from gradproj.store.manifest import STATUS
from gradproj.store.shards import Store
from gradproj.training.train import check_adapter_objective

AUX = "aux"


@dataclass
class ScoreTable:
    """One row per pair id; columns are numpy arrays aligned with ``ids``."""

    ids: list[str]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """JSON-ready record kept with the table (e.g. ``objective``: the objective's settings)."""

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise GradprojError(f"score '{name}' is not in the table (has: "
                                f"{', '.join(self.columns) or 'none'})")
        return self.columns[name]

    def add(self, name: str, ids: list[str], values) -> None:
        """Add a column given for ``ids`` (any order, possibly a subset: others get NaN)."""
        pos = {i: n for n, i in enumerate(self.ids)}
        col = np.full(len(self.ids), np.nan, dtype=np.asarray(values).dtype
                      if np.asarray(values).dtype != bool else float)
        for i, v in zip(ids, values):
            if i in pos:
                col[pos[i]] = v
        self.columns[name] = col

    def write(self, path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        table = pa.table({"id": self.ids, **self.columns})
        table = table.replace_schema_metadata({"gradproj": json.dumps(self.meta)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def read(cls, path) -> ScoreTable:
        import pyarrow.parquet as pq

        read = pq.read_table(path)
        meta = json.loads((read.schema.metadata or {}).get(b"gradproj", b"{}"))
        data = read.to_pydict()
        ids = data.pop("id")
        return cls(ids, {k: np.asarray(v, dtype=float) for k, v in data.items()}, meta)


def merge_score_tables(parts: list[ScoreTable], pairs: list[PreferencePair]) -> ScoreTable:
    """One table of ``pairs`` (input order) from tables of disjoint subsets of them (the ranks'
    shards of a torchrun run): columns by id, ``excluded`` joined and ``truncated`` in input
    order; the rest of ``meta`` from the first part (equal on every rank)."""
    ids = [p.id for p in pairs]
    table = ScoreTable(ids, meta=dict(parts[0].meta))
    excluded: dict = {}
    truncated: set = set()
    for part in parts:
        excluded.update(part.meta.get("excluded", {}))
        truncated.update(part.meta.get("truncated", []))
    if "excluded" in table.meta:
        table.meta["excluded"] = {i: excluded[i] for i in ids if i in excluded}
    if "truncated" in table.meta:
        table.meta["truncated"] = [i for i in ids if i in truncated]
    for name in parts[0].columns:
        col = np.full(len(ids), np.nan, dtype=parts[0].columns[name].dtype)
        pos = {i: n for n, i in enumerate(ids)}
        for part in parts:
            if part.ids:
                col[[pos[i] for i in part.ids]] = part.columns[name]
        table.columns[name] = col
    return table


def irm_from_store(store: Store) -> tuple[list[str], np.ndarray]:
    """(ids, margin m(d)) from the log-probs a store saved at its adapter — no forward pass;
    the margin of the store's own objective."""
    import torch

    r = store.rows
    objective = Objective.from_settings(store.manifest["objective"])
    lp = PairLogProbs(*(torch.from_numpy(r[k].astype(np.float64)) for k in (
        "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "len_chosen",
        "len_rejected")))
    m = objective.margin(lp).numpy()
    m[r["status"] != STATUS["ok"]] = np.nan
    return store.ids(), m


def with_aux_adapter(loaded: LoadedModel, aux_path: str):
    """Load θ_V into the same peft model as a second adapter (no second copy of the base)."""
    if AUX in loaded.model.peft_config:
        loaded.model.delete_adapter(AUX)
    if not (Path(aux_path) / "adapter_config.json").is_file():
        raise GradprojError(f"{aux_path}: not a peft adapter folder (no adapter_config.json)")
    loaded.model.load_adapter(aux_path, adapter_name=AUX, is_trainable=False)


def score_pairs(loaded: LoadedModel, pairs: list[PreferencePair], aux_adapter: str | None,
                pref: PreferenceSettings = PreferenceSettings(), batch_size: int = 8,
                progress=None, force_objective: bool = False,
                shard: tuple[int, int] = (0, 1)) -> ScoreTable:
    """IRM at θ (``loaded``'s active adapter) and, given θ_V, LossDiff and its parts, under
    ``pref``'s objective (refused for an adapter trained with another, unless
    ``force_objective``).

    Columns: ``irm`` (the objective's margin), ``loss_theta``, the summed response log-probs
    ``policy_chosen_logps`` / ``policy_rejected_logps`` at θ and ``ref_chosen_logps`` /
    ``ref_rejected_logps`` (adapter off; not for a reference-free objective), and with
    ``aux_adapter``:
    ``loss_aux``, ``irm_aux``, ``lossdiff``. Pairs excluded by tokenization get NaN (and are
    listed by ``tokenize_pairs``).

    ``shard=(r, w)`` (a torchrun rank of w): score only the batches b % w == r of the
    one-process run (consecutive ``batch_size`` tokenized pairs), so every forward pass has the
    shapes, padding and values it has in one process; the table then holds only those pairs
    (join the ranks' tables with :func:`merge_score_tables`).
    """
    fn = pref.objective()
    for adapter in (loaded.settings.adapter, aux_adapter):
        check_adapter_objective(adapter, fn, force_objective,
                                pref.template_record(loaded.tokenizer))
    tok = pref.tokenize(pairs, loaded.tokenizer)
    if not tok.pairs:
        raise GradprojError("no pair left to score after tokenization")
    pad = loaded.tokenizer.pad_token_id
    rank, world = shard
    scored = tok.pairs if world == 1 else [
        p for n, p in enumerate(tok.pairs) if (n // batch_size) % world == rank]
    ids = [p.id for p in scored]
    if not scored:              # a rank past the last batch
        return ScoreTable([], meta={"objective": fn.settings(), "excluded": dict(tok.excluded),
                                    "truncated": []})
    max_tokens = loaded.settings.max_tokens   # batching only: the scores do not depend on it
    lp = pair_logprobs(loaded.model, scored, pad, batch_size, progress=progress,
                       with_reference=fn.needs_reference, max_tokens=max_tokens)
    table = ScoreTable([p.id for p in pairs] if world == 1 else ids, meta={
        "objective": fn.settings(), "excluded": dict(tok.excluded),
        "truncated": [p.id for p in scored if p.truncated],
        "chat_template": pref.template_record(loaded.tokenizer)})
    h = fn.margin(lp)
    if fn.needs_reference:      # trl's precomputed reference columns (see pipeline.outputs)
        table.add("ref_chosen_logps", ids, lp.ref_chosen.double().numpy())
        table.add("ref_rejected_logps", ids, lp.ref_rejected.double().numpy())
    table.add("policy_chosen_logps", ids, lp.policy_chosen.double().numpy())     # at θ
    table.add("policy_rejected_logps", ids, lp.policy_rejected.double().numpy())
    table.add("irm", ids, h.double().numpy())
    table.add("loss_theta", ids, fn.loss_from_margin(h).double().numpy())
    if aux_adapter is not None:
        active = loaded.model.active_adapter
        with_aux_adapter(loaded, aux_adapter)
        try:
            loaded.model.set_adapter(AUX)
            pc, pr = response_logprobs(loaded.model, scored, pad, batch_size,
                                       progress=progress, max_tokens=max_tokens)
        finally:
            loaded.model.set_adapter(active)
            loaded.model.delete_adapter(AUX)
        h_aux = fn.margin(PairLogProbs(pc, pr, lp.ref_chosen, lp.ref_rejected, lp.len_chosen,
                                       lp.len_rejected))
        loss_aux = fn.loss_from_margin(h_aux)
        table.add("irm_aux", ids, h_aux.double().numpy())
        table.add("loss_aux", ids, loss_aux.double().numpy())
        table.add("lossdiff", ids, (fn.loss_from_margin(h) - loss_aux).double().numpy())
    return table
