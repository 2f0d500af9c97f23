"""Scores of training pairs: IRM, LossDiff (and IF/TIF from gradproj.influence), one table.

    IRM(d)      = h_θ(d) = β[(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))]
    LossDiff(d) = ℓ(θ; d) − ℓ(θ_V; d)        θ_V: θ trained one more epoch on the validation pairs

Both need forward passes only; the reference log-probs are computed once and reused for θ and
θ_V. With a store built at θ, IRM comes free from its saved log-probs. LossDiff > 0 means the
validation-tuned model fits d better than θ does (first order: LossDiff ≈ η·IF).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradproj.core.data import PreferencePair
from gradproj.core.logprobs import PairLogProbs, pair_logprobs, response_logprobs
from gradproj.core.objectives import make_loss
from gradproj.core.errors import GradprojError
from gradproj.core.model import LoadedModel
from gradproj.store.shards import STATUS, Store
from gradproj.core.tokens import tokenize_pairs

AUX = "aux"


@dataclass
class ScoreTable:
    """One row per pair id; columns are numpy arrays aligned with ``ids``."""

    ids: list[str]
    columns: dict[str, np.ndarray] = field(default_factory=dict)

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
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.table({"id": self.ids, **self.columns}), tmp)
        tmp.replace(path)

    @classmethod
    def read(cls, path) -> ScoreTable:
        import pyarrow.parquet as pq

        data = pq.read_table(path).to_pydict()
        ids = data.pop("id")
        return cls(ids, {k: np.asarray(v, dtype=float) for k, v in data.items()})


def irm_from_store(store: Store) -> tuple[list[str], np.ndarray]:
    """(ids, h_θ) from the log-probs a store saved at its adapter — no forward pass."""
    r, beta = store.rows, float(store.manifest["loss"]["beta"])
    h = beta * ((r["policy_chosen"] - r["ref_chosen"]) - (r["policy_rejected"] - r["ref_rejected"]))
    h = h.astype(np.float64)
    h[r["status"] != STATUS["ok"]] = np.nan
    return store.ids(), h


def with_aux_adapter(loaded: LoadedModel, aux_path: str):
    """Load θ_V into the same peft model as a second adapter (no second copy of the base)."""
    if AUX in loaded.model.peft_config:
        loaded.model.delete_adapter(AUX)
    if not (Path(aux_path) / "adapter_config.json").is_file():
        raise GradprojError(f"{aux_path}: not a peft adapter folder (no adapter_config.json)")
    loaded.model.load_adapter(aux_path, adapter_name=AUX, is_trainable=False)


def score_pairs(loaded: LoadedModel, pairs: list[PreferencePair], aux_adapter: str | None,
                beta: float = 0.1, max_length: int = 512, batch_size: int = 8,
                loss: str = "dpo", progress=None) -> ScoreTable:
    """IRM at θ (``loaded``'s active adapter) and, given θ_V, LossDiff and its parts.

    Columns: ``irm``, ``loss_theta``, and with ``aux_adapter``: ``loss_aux``, ``irm_aux``,
    ``lossdiff``. Pairs excluded by tokenization get NaN (and are listed by ``tokenize_pairs``).
    """
    fn = make_loss(loss, beta)
    tok = tokenize_pairs(pairs, loaded.tokenizer, max_length)
    if not tok.pairs:
        raise GradprojError("no pair left to score after tokenization")
    pad = loaded.tokenizer.pad_token_id
    ids = [p.id for p in tok.pairs]
    lp = pair_logprobs(loaded.model, tok.pairs, pad, batch_size, progress=progress)
    table = ScoreTable([p.id for p in pairs])
    h = fn.margin(lp)
    table.add("irm", ids, h.double().numpy())
    table.add("loss_theta", ids, fn.from_margin(h).double().numpy())
    if aux_adapter is not None:
        active = loaded.model.active_adapter
        with_aux_adapter(loaded, aux_adapter)
        try:
            loaded.model.set_adapter(AUX)
            pc, pr = response_logprobs(loaded.model, tok.pairs, pad, batch_size,
                                       progress=progress)
        finally:
            loaded.model.set_adapter(active)
            loaded.model.delete_adapter(AUX)
        h_aux = fn.margin(PairLogProbs(pc, pr, lp.ref_chosen, lp.ref_rejected))
        loss_aux = fn.from_margin(h_aux)
        table.add("irm_aux", ids, h_aux.double().numpy())
        table.add("loss_aux", ids, loss_aux.double().numpy())
        table.add("lossdiff", ids, (fn.from_margin(h) - loss_aux).double().numpy())
    return table
