"""Continue training from θ on a chosen set of pairs and evaluate on held-out pairs — the
downstream test of a selection rule, and the retraining step of the LDS.

Every run starts from the same θ (the adapter's trainable weights are restored in place before
it: no reload), trains with ``train_adapter`` (a fresh AdamW, the given data-order seed) and is
evaluated on the same held-out pairs, whose reference log-probs (adapter off) are computed once.
So two runs differ only in their pairs and their seed.

    rows = continue_on_rules(Continuation(loaded_at_theta, HeldOut(loaded, test), training,
                                          pref, work), table, train, RULES, keep=0.64)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import select
from gradproj.core.data import PreferencePair
from gradproj.core.logprobs import response_logprobs
from gradproj.core.model import LoadedModel
from gradproj.core.objectives import PreferenceSettings
from gradproj.evaluation.noise import selection_stats
from gradproj.evaluation.state import restore, snapshot
from gradproj.training.evaluate import EvalResult, evaluate
from gradproj.training.train import (TrainResult, TrainSettings, reference_logprobs,
                                     train_adapter)

class HeldOut:
    """Held-out pairs with their reference log-probs (chosen [N], rejected [N]) computed once."""

    def __init__(self, loaded: LoadedModel, pairs: list[PreferencePair],
                 pref: PreferenceSettings = PreferenceSettings(), batch_size: int = 8):
        self.pairs, self.pref, self.batch_size = pairs, pref, batch_size
        tok = pref.tokenize(pairs, loaded.tokenizer)
        self.n_truncated = tok.n_truncated
        self.reference = response_logprobs(loaded.model, tok.pairs, loaded.tokenizer.pad_token_id,
                                           batch_size, reference=True,
                                           max_tokens=loaded.settings.max_tokens)

    def evaluate(self, loaded: LoadedModel) -> EvalResult:
        """Metrics of ``loaded``'s active adapter on the held-out pairs."""
        return evaluate(loaded, self.pairs, self.pref, batch_size=self.batch_size,
                        reference=self.reference)


@dataclass
class Continued:
    train: TrainResult
    result: EvalResult
    train_seconds: float
    """Wall time of ``train_adapter`` (setup and saving included)."""
    eval_seconds: float

    def row(self) -> dict:
        losses = self.train.losses
        return {**self.result.to_dict(), "steps": self.train.steps,
                "final_train_loss": losses[-1] if losses else None,
                "train_seconds": self.train_seconds, "eval_seconds": self.eval_seconds}


class Continuation:
    """Runs of "continue from θ on these pairs, evaluate on ``heldout``" (module docstring).

    ``loaded`` must have θ as its active adapter (``loaded.settings.adapter`` = θ's folder);
    its trainable weights at construction are θ. Adapters go to ``work/<name>`` and are removed
    after evaluation unless ``keep_adapters``.
    """

    def __init__(self, loaded: LoadedModel, heldout: HeldOut, training: TrainSettings,
                 pref: PreferenceSettings, work: str | Path, keep_adapters: bool = False):
        self.loaded, self.heldout, self.training, self.pref = loaded, heldout, training, pref
        self.work, self.keep_adapters = Path(work), keep_adapters
        self.theta = snapshot(loaded.model)
        self.reference: dict[str, tuple[float, float]] = {}
        """Reference log-probs of every pair trained on so far (adapter off: the same for
        every run), computed once and handed to train_adapter."""

    def reference_of(self, pairs: list[PreferencePair]) -> dict[str, tuple[float, float]] | None:
        """The reference log-probs of ``pairs``, computing those not seen before; None where
        training makes no use of them (a reference-free objective, or trl's own loss)."""
        objective = self.pref.objective()
        if not objective.needs_reference or (self.training.trl_loss and objective.trl_matches()):
            return None
        new = [p for p in pairs if p.id not in self.reference]
        if new:
            self.reference.update(reference_logprobs(self.loaded, new, self.pref,
                                                     self.heldout.batch_size))
        return self.reference

    def reset(self) -> None:
        """Put θ's weights back into the adapter."""
        restore(self.loaded.model, self.theta)

    def evaluate(self) -> EvalResult:
        return self.heldout.evaluate(self.loaded)

    def __call__(self, pairs: list[PreferencePair], seed: int, name: str = "run",
                 epochs: float | None = None,
                 on_step: Callable[[int], None] | None = None) -> Continued:
        """Reset to θ, train on ``pairs`` (``epochs`` default: the settings'; ``on_step`` as in
        train_adapter), evaluate."""
        self.reset()
        settings = replace(self.training, seed=seed,
                           epochs=self.training.epochs if epochs is None else epochs)
        out = self.work / name
        t = time.perf_counter()
        res = train_adapter(self.loaded, pairs, settings, out, pref=self.pref, overwrite=True,
                            progress=False, on_step=on_step, reference=self.reference_of(pairs))
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        result = self.evaluate()
        eval_s = time.perf_counter() - t
        if not self.keep_adapters:
            shutil.rmtree(out, ignore_errors=True)
        return Continued(res, result, train_s, eval_s)


def continue_on_rules(cont: Continuation, table: ScoreTable, train: list[PreferencePair],
                      rules: Sequence[str], keep: float, seeds: Sequence[int] = (0,),
                      flipped=frozenset(), epochs: float | None = None,
                      on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """For every seed and rule: select ``keep`` of ``table`` with the rule (the seed also draws
    the random rule), continue from θ on the selection, evaluate. One row per run: rule, seed,
    :func:`gradproj.evaluation.noise.selection_stats` (flips against ``flipped``, overlap with
    the TIF selection when ``table`` has IF), the held-out metrics and the run's cost.
    ``on_row`` is called after each run (e.g. to save partial results)."""
    by_id = {p.id: p for p in train}
    tif_kept = select(table, "tif", keep).kept if "if" in table.columns else None
    rows = []
    for seed in seeds:
        for rule in rules:
            sel = select(table, rule, keep, seed=seed)
            done = cont([by_id[i] for i in sel.kept], seed, f"{rule}-s{seed}", epochs)
            rows.append({"rule": rule, "seed": seed, **selection_stats(sel, flipped, tif_kept),
                         **done.row()})
            if on_row is not None:
                on_row(rows[-1])
    return rows
