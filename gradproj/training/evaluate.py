"""Held-out preference metrics of a model under an objective: reward accuracy (share with
margin > 0), policy accuracy, mean margin, mean loss."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gradproj.core.data import PreferencePair
from gradproj.core.logprobs import PairLogProbs, pair_logprobs
from gradproj.core.errors import GradprojError
from gradproj.core.objectives import Objective, PreferenceSettings
from gradproj.core.progress import progress_bar
from gradproj.core.model import LoadedModel


@dataclass
class EvalResult:
    n: int
    """Pairs scored (after tokenization exclusions)."""
    accuracy: float
    """Reward accuracy: share of pairs with margin h_θ(d) > 0 (0 for a fresh adapter: h = 0)."""
    policy_accuracy: float
    """Share of pairs with log π_θ(y_w|x) > log π_θ(y_l|x): the policy prefers the chosen answer."""
    mean_margin: float
    mean_loss: float
    n_excluded: int

    def to_dict(self) -> dict:
        return asdict(self)


def metrics(lp: PairLogProbs, objective: Objective) -> EvalResult:
    """Metrics from log-probs already computed."""
    m = objective.margin(lp)
    prefers = (lp.policy_chosen > lp.policy_rejected).float().mean()
    return EvalResult(n=len(m), accuracy=float((m > 0).float().mean()),
                      policy_accuracy=float(prefers), mean_margin=float(m.mean()),
                      mean_loss=float(objective.loss_from_margin(m).mean()), n_excluded=0)


def evaluate(loaded: LoadedModel, pairs: list[PreferencePair],
             pref: PreferenceSettings = PreferenceSettings(), batch_size: int = 8,
             reference=None, progress: bool = False) -> EvalResult:
    """Score ``pairs`` under the loaded adapter (policy) against the adapter disabled (reference),
    with ``pref``'s objective.

    ``reference``: (chosen, rejected) reference log-probs of the same pairs, to skip recomputing
    them when one set of pairs is evaluated under many adapters.
    """
    objective = pref.objective()
    tokenized = pref.tokenize(pairs, loaded.tokenizer)
    if not tokenized.pairs:
        raise GradprojError("no pair left to evaluate after tokenization")
    passes = 1 + (reference is None and objective.needs_reference)
    with progress_bar(passes * len(tokenized.pairs), "evaluate", progress) as update:
        lp = pair_logprobs(loaded.model, tokenized.pairs, loaded.tokenizer.pad_token_id,
                           batch_size, reference=reference, progress=update,
                           with_reference=objective.needs_reference,
                           max_tokens=loaded.settings.max_tokens)
    result = metrics(lp, objective)
    result.n_excluded = len(tokenized.excluded)
    return result
