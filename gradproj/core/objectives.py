"""Preference objectives: one object owns the per-pair loss, its margin and its parameters.

For a pair d = (x, y_w, y_l), with summed response log-probs under the policy π_θ (adapter on)
and the reference π_ref (adapter off), and |y| the number of response tokens:

    z(d) = (log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))

    DPO   (trl "sigmoid")  margin m = β z                              ℓ = −log σ(m)
    IPO   (trl "ipo")      margin m = ρ_w/|y_w| − ρ_l/|y_l|            ℓ = (m − 1/(2β))²
                           (ρ = log π_θ − log π_ref, each divided by its own length, as trl does)
    SLiC  (trl "hinge")    margin m = β z                              ℓ = max(0, δ − m)
    SimPO (reference-free) margin m = β/|y_w| log π_θ(y_w|x) − β/|y_l| log π_θ(y_l|x)
                                                                       ℓ = −log σ(m − γ)

The margin is the column IRM reports: the quantity the loss is a function of. One
:class:`Objective` is used end to end — trl's trainer (its own ``loss_type`` where trl has the
loss, else gradproj's loss inside the trainer), per-pair gradients, the store, the scores and
the evaluation — and its :meth:`Objective.settings` record is written into every artefact that
depends on it, so that a store of one objective is never queried with another.

To add an objective: subclass :class:`Objective`, set ``name``, ``params`` (extra parameters and
their defaults), ``trl_loss_type`` (or None) and ``needs_reference``, implement ``margin`` and
``loss_from_margin``, and decorate it with :func:`register`. Nothing else changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from gradproj.core.errors import BadInput, IncompatibleStore
from gradproj.core.logprobs import PairLogProbs
from gradproj.core.tokens import TokenizeResult, template_record, tokenize_pairs
from gradproj.core.settings import (
    Settings,
    at_least_one,
    parse_assignments,
    positive,
    setting,
)

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its ``name`` (CLI ``--loss``)."""
    OBJECTIVES[cls.name] = cls
    return cls


class Objective(ABC):
    """A pairwise preference loss ℓ(m(d)) of a margin m computed from a pair's log-probs."""

    name: ClassVar[str]
    params: ClassVar[dict[str, float]] = {}
    """Parameters beyond β, with their defaults (set with ``--loss-param NAME=VALUE``)."""
    trl_loss_type: ClassVar[str | None] = None
    """trl DPOTrainer's ``loss_type`` computing the same loss, or None (gradproj's own)."""
    needs_reference: ClassVar[bool] = True
    """False for reference-free objectives: no reference pass is made for them."""

    def __init__(self, beta: float = 0.1, **params: float):
        if not beta > 0:
            raise BadInput(f"--beta must be > 0, got {beta}")
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(self.params) or "none"
            raise BadInput(f"--loss-param {unknown[0]}: {self.name} has no such parameter "
                           f"(its parameters: {known})")
        self.beta = float(beta)
        for key, default in self.params.items():
            setattr(self, key, float(params.get(key, default)))

    @abstractmethod
    def margin(self, lp: PairLogProbs) -> torch.Tensor:
        """The margin m(d) the loss is a function of (the IRM column): [N]."""

    @abstractmethod
    def loss_from_margin(self, m: torch.Tensor) -> torch.Tensor:
        """Per-pair loss ℓ(m): [N] → [N]."""

    def __call__(self, lp: PairLogProbs) -> torch.Tensor:
        """Per-pair loss ℓ(θ; d): [N]."""
        return self.loss_from_margin(self.margin(lp))

    def trl_matches(self) -> bool:
        """Whether trl's ``trl_loss_type`` computes this loss with these parameters."""
        return self.trl_loss_type is not None

    def settings(self) -> dict:
        """The record written into train.json, the store manifest, scores and selection."""
        return {"name": self.name, "beta": self.beta,
                "params": {k: getattr(self, k) for k in self.params}}

    def describe(self) -> str:
        extra = "".join(f", {k}={getattr(self, k):g}" for k in self.params)
        return f"{self.name} (beta={self.beta:g}{extra})"

    @staticmethod
    def from_settings(record: dict) -> Objective:
        """The objective a ``settings()`` record describes."""
        return make_objective(record["name"], record["beta"], **record.get("params", {}))

    def __eq__(self, other) -> bool:
        return isinstance(other, Objective) and self.settings() == other.settings()

    def __hash__(self) -> int:
        return hash(repr(self.settings()))

    def __repr__(self) -> str:
        return f"Objective({self.describe()})"


def log_ratio_margin(lp: PairLogProbs) -> torch.Tensor:
    """z = (π_w − ref_w) − (π_l − ref_l), summed response log-probs: [N]."""
    return (lp.policy_chosen - lp.ref_chosen) - (lp.policy_rejected - lp.ref_rejected)


@register
class DPO(Objective):
    """ℓ = −log σ(β z), computed as softplus(−β z) (stable for large |z|)."""

    name = "dpo"
    trl_loss_type = "sigmoid"

    def margin(self, lp):
        return self.beta * log_ratio_margin(lp)

    def loss_from_margin(self, m):
        return F.softplus(-m)


@register
class IPO(Objective):
    """ℓ = (z̄ − 1/(2β))² with z̄ the length-normalised log-ratio difference (trl's form)."""

    name = "ipo"
    trl_loss_type = "ipo"

    def margin(self, lp):
        return ((lp.policy_chosen - lp.ref_chosen) / lp.len_chosen.clamp(min=1)
                - (lp.policy_rejected - lp.ref_rejected) / lp.len_rejected.clamp(min=1))

    def loss_from_margin(self, m):
        return (m - 1.0 / (2.0 * self.beta)) ** 2


@register
class SLiC(Objective):
    """ℓ = max(0, δ − β z): a hinge on the reference-normalised margin (trl "hinge" fixes δ=1)."""

    name = "slic"
    params = {"delta": 1.0}
    trl_loss_type = "hinge"

    def margin(self, lp):
        return self.beta * log_ratio_margin(lp)

    def loss_from_margin(self, m):
        return torch.clamp(self.delta - m, min=0.0)

    def trl_matches(self) -> bool:
        return self.delta == 1.0


@register
class SimPO(Objective):
    """ℓ = −log σ(β/|y_w| log π_θ(y_w|x) − β/|y_l| log π_θ(y_l|x) − γ); no reference model."""

    name = "simpo"
    params = {"gamma": 0.5}
    needs_reference = False

    def margin(self, lp):
        return self.beta * (lp.policy_chosen / lp.len_chosen.clamp(min=1)
                            - lp.policy_rejected / lp.len_rejected.clamp(min=1))

    def loss_from_margin(self, m):
        return F.softplus(-(m - self.gamma))


def make_objective(name: str = "dpo", beta: float = 0.1, **params: float) -> Objective:
    """The registered objective ``name`` with β and its parameters."""
    if name not in OBJECTIVES:
        raise BadInput(f"--loss must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name](beta, **params)


@dataclass(frozen=True)
class PreferenceSettings(Settings):
    """What makes a pair's loss what it is, shared by every stage: the objective and the tokens.

    Training, the store, the scores and the evaluation all take this one object; the objective
    it builds is recorded in every artefact (see :func:`check_objective`).
    """

    loss: str = setting("dpo", "Preference objective (the loss trained, stored and scored).",
                        choices=lambda: tuple(OBJECTIVES))
    beta: float = setting(0.1, "β of the objective (IPO: its regularisation τ).", check=positive)
    loss_param: tuple = setting((), "Objective parameter NAME=VALUE (repeatable), e.g. delta=1.0 "
                                    "(slic), gamma=0.5 (simpo).", multiple=True,
                                metavar="NAME=VALUE", parse=lambda items: tuple(items))
    max_length: int = setting(512, "Tokens per sequence (prompt + response); the prompt is cut "
                                   "from the left first.", check=at_least_one)
    max_prompt_length: int | None = setting(None, "Fewest prompt tokens kept when a sequence is "
                                                  "cut to --max-length (default: half of it); "
                                                  "the responses are cut after that.",
                                            check=at_least_one)
    chat_template: str = setting("auto", "Chat template: auto (trl's rule: the tokenizer's "
                                         "template for conversational pairs, none for plain "
                                         "text), off (never; conversational pairs are refused) "
                                         "or a Jinja FILE for conversational pairs.",
                                 metavar="auto|off|FILE")

    def __post_init__(self):
        super().__post_init__()
        self.objective()     # unknown parameter names are refused here, once

    def objective(self) -> Objective:
        return make_objective(self.loss, self.beta, **parse_assignments(self.loss_param))

    def tokenize(self, pairs, tokenizer) -> TokenizeResult:
        """``pairs`` tokenized as every stage sees them (template, max lengths)."""
        return tokenize_pairs(pairs, tokenizer, self.max_length, self.max_prompt_length,
                              self.chat_template)

    def template_record(self, tokenizer) -> dict:
        """The chat template this setting applies with ``tokenizer``, as artefacts record it."""
        return template_record(self.chat_template, tokenizer)


def check_objective(recorded: dict, requested: Objective, where: str,
                    force: bool = False) -> None:
    """Refuse ``requested`` when ``recorded`` (an artefact's objective record) differs, in one
    line naming both; with ``force`` the mismatch is allowed on purpose (``--force-objective``)."""
    if force or recorded == requested.settings():
        return
    raise IncompatibleStore(f"{where}: made with objective "
                            f"{Objective.from_settings(recorded).describe()}, requested "
                            f"{requested.describe()} (use --force-objective to allow this)")
