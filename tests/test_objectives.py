"""The objective seam: formulas by hand, settings records, and per objective the two contracts —
per-pair hook gradients equal an autograd loop, and trl's first logged training loss equals
gradproj's loss for the same batch — on tiny Llama and GPT-2-style models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import SAMPLE, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.errors import BadInput, IncompatibleStore
from gradproj.core.logprobs import PairLogProbs, pair_logprobs, sequence_logprobs
from gradproj.core.model import LoraSettings, ModelSettings, load_model
from gradproj.core.objectives import (
    DPO,
    IPO,
    OBJECTIVES,
    SLiC,
    Objective,
    PreferenceSettings,
    SimPO,
    check_objective,
    make_objective,
)
from gradproj.core.tokens import collate, tokenize_pairs
from gradproj.gradients.perpair import PerPairGradients, per_pair_gradients_loop
from gradproj.evaluation.state import restore, snapshot
from gradproj.training.train import TrainSettings, reference_logprobs, train_adapter

ALL = [PreferenceSettings(loss="dpo", beta=0.1),
       PreferenceSettings(loss="ipo", beta=0.5),
       PreferenceSettings(loss="slic", beta=0.1, loss_param=("delta=1.0",)),
       PreferenceSettings(loss="slic", beta=0.2, loss_param=("delta=3.0",)),
       PreferenceSettings(loss="simpo", beta=2.0, loss_param=("gamma=0.5",))]
IDS = ["dpo", "ipo", "slic-trl", "slic-delta3", "simpo"]
TARGETS = {"tiny_llama": ("q_proj", "v_proj", "up_proj"), "tiny_gpt2": ("c_attn", "c_fc")}


def _lp():
    """Two pairs with hand-chosen log-probs and lengths."""
    return PairLogProbs(torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -2.0]),
                        torch.tensor([-4.0, -9.0]), torch.tensor([-4.5, -2.5]),
                        torch.tensor([2.0, 5.0]), torch.tensor([4.0, 1.0]))


def _sigmoid_loss(x):
    return -math.log(1 / (1 + math.exp(-x)))


def test_every_objective_matches_its_formula_by_hand():
    lp = _lp()
    z = [(-3 + 4) - (-5 + 4.5), (-10 + 9) - (-2 + 2.5)]          # 1.5, -1.5
    dpo = DPO(0.1)
    assert dpo.margin(lp).tolist() == pytest.approx([0.15, -0.15], abs=1e-7)
    assert dpo(lp).tolist() == pytest.approx([_sigmoid_loss(0.1 * v) for v in z], abs=1e-7)

    # IPO (trl): each log-ratio divided by its own length, ℓ = (m − 1/(2β))²
    ipo = IPO(0.5)
    m = [(-3 + 4) / 2 - (-5 + 4.5) / 4, (-10 + 9) / 5 - (-2 + 2.5) / 1]
    assert ipo.margin(lp).tolist() == pytest.approx(m, abs=1e-7)
    assert ipo(lp).tolist() == pytest.approx([(v - 1.0) ** 2 for v in m], abs=1e-6)

    slic = SLiC(0.1, delta=3.0)
    assert slic(lp).tolist() == pytest.approx([3.0 - 0.15, 3.0 + 0.15], abs=1e-6)
    assert SLiC(0.1, delta=0.1)(lp).tolist() == pytest.approx([0.0, 0.25], abs=1e-7)

    # SimPO: reference-free, β/|y| log π, ℓ = −log σ(m − γ); the reference fields are ignored
    simpo = SimPO(2.0, gamma=0.5)
    m = [2.0 * (-3 / 2 - -5 / 4), 2.0 * (-10 / 5 - -2 / 1)]
    assert simpo.margin(lp).tolist() == pytest.approx(m, abs=1e-6)
    assert simpo(lp).tolist() == pytest.approx([_sigmoid_loss(v - 0.5) for v in m], abs=1e-6)
    moved = PairLogProbs(lp.policy_chosen, lp.policy_rejected, lp.ref_chosen + 7,
                         lp.ref_rejected - 3, lp.len_chosen, lp.len_rejected)
    assert torch.equal(simpo(moved), simpo(lp))


def test_dpo_loss_is_stable_for_large_margins():
    out = DPO().loss_from_margin(torch.tensor([-1000.0, 0.0, 1000.0]))
    assert out.tolist() == pytest.approx([1000.0, math.log(2), 0.0], abs=1e-6)


def test_registry_settings_records_and_errors():
    assert set(OBJECTIVES) >= {"dpo", "ipo", "slic", "simpo"}
    slic = make_objective("slic", 0.2, delta=2.0)
    record = slic.settings()
    assert record == {"name": "slic", "beta": 0.2, "params": {"delta": 2.0}}
    assert Objective.from_settings(json.loads(json.dumps(record))) == slic
    assert make_objective("simpo").settings() == {"name": "simpo", "beta": 0.1,
                                                  "params": {"gamma": 0.5}}
    assert [o.trl_loss_type for o in (DPO(), IPO(), SLiC(), SimPO())] == [
        "sigmoid", "ipo", "hinge", None]
    assert SLiC(delta=1.0).trl_matches() and not SLiC(delta=2.0).trl_matches()
    assert not SimPO.needs_reference and DPO.needs_reference
    with pytest.raises(BadInput, match="--beta must be > 0"):
        DPO(0.0)
    with pytest.raises(BadInput, match="--loss must be one of dpo, ipo, slic, simpo"):
        make_objective("kto")
    with pytest.raises(BadInput, match="--loss-param gamma: dpo has no such parameter"):
        PreferenceSettings(loss="dpo", loss_param=("gamma=1",))
    with pytest.raises(BadInput, match="expected NAME=VALUE"):
        PreferenceSettings(loss="slic", loss_param=("delta",))
    pref = PreferenceSettings(loss="slic", beta=0.3, loss_param=("delta=2",), max_length=64)
    assert PreferenceSettings.from_dict(json.loads(json.dumps(pref.to_dict()))) == pref


def test_check_objective_refuses_another_objective_in_one_line():
    check_objective(DPO(0.1).settings(), DPO(0.1), "adapter a")          # same: passes
    with pytest.raises(IncompatibleStore) as err:
        check_objective(IPO(0.1).settings(), DPO(0.1), "adapter a")
    assert str(err.value) == ("adapter a: made with objective ipo (beta=0.1), requested dpo "
                              "(beta=0.1) (use --force-objective to allow this)")
    with pytest.raises(IncompatibleStore, match="slic \\(beta=0.1, delta=1\\)"):
        check_objective(SLiC(0.1).settings(), SLiC(0.1, delta=2.0), "store s")
    check_objective(IPO(0.1).settings(), DPO(0.1), "adapter a", force=True)


def _loaded(folder, arch):
    loaded = load_model(ModelSettings(model=folder, device="cpu",
                                      lora=LoraSettings(targets=TARGETS[arch])))
    perturb_lora(loaded.model)        # B ≠ 0: policy ≠ reference, gradients wrt A non-zero
    return loaded


def _pairs():
    return pairs_from_records([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE])


@pytest.mark.parametrize("arch", list(TARGETS))
@pytest.mark.parametrize("pref", ALL, ids=IDS)
def test_hook_gradients_equal_an_autograd_loop(arch, pref, request):
    loaded = _loaded(request.getfixturevalue(arch), arch)
    objective = pref.objective()
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, 64).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    assert (batch.attention_mask == 0).any()         # mixed lengths → right padding
    with PerPairGradients(loaded, objective) as pg:
        out = pg(batch)
    loop = per_pair_gradients_loop(loaded.model, objective, batch)
    want = torch.cat(list(loop.values()), dim=1)
    assert (want.norm(dim=1) > 0).all()
    rel = (out.flat() - want).norm(dim=1) / want.norm(dim=1)
    assert rel.max().item() <= 1e-5
    # the batched losses are the objective applied to the batched log-probs
    lp = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id,
                       with_reference=objective.needs_reference)
    assert torch.allclose(out.losses, objective(lp), atol=1e-6)
    assert torch.equal(out.logprobs.len_chosen, lp.len_chosen)
    # and their sum is the gradient of the batch's summed loss (plain autograd)
    params = list(loaded.lora_parameters().values())
    with torch.enable_grad():
        pol = sequence_logprobs(loaded.model, batch)
        total = objective(PairLogProbs.from_rows(pol, (lp.ref_chosen, lp.ref_rejected),
                                                 batch.response_lengths())).sum()
        full = torch.cat([g.reshape(-1) for g in torch.autograd.grad(total, params)])
    assert ((out.flat().sum(0) - full).norm() / full.norm()).item() <= 1e-5


@pytest.mark.parametrize("arch", list(TARGETS))
@pytest.mark.parametrize("pref", ALL, ids=IDS)
def test_first_trl_training_step_logs_gradprojs_loss(arch, pref, request, tmp_path):
    """The loss trl's trainer optimises is gradproj's mean loss over the batch: gradproj's own
    (the default), trl's own loss_type where trl has the objective (trl_loss=True), and with
    reference log-probs precomputed (no reference pass while training)."""
    loaded = _loaded(request.getfixturevalue(arch), arch)
    objective = pref.objective()
    pairs = _pairs()
    tok = tokenize_pairs(pairs, loaded.tokenizer, 64).pairs
    expected = objective(pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id)).mean()
    theta = snapshot(loaded.model)
    # trl_loss where trl lacks the objective (SimPO, SLiC δ ≠ 1) falls back to gradproj's loss
    ways = [{}, {"reference": reference_logprobs(loaded, pairs, pref)},
            {"settings": {"trl_loss": True}}]
    for way in ways:
        restore(loaded.model, theta)
        settings = TrainSettings(epochs=1, lr=1e-3, batch_size=len(pairs),
                                 **way.get("settings", {}))
        result = train_adapter(loaded, pairs, settings, tmp_path / "a", pref=pref,
                               progress=False, overwrite=True, reference=way.get("reference"))
        assert result.steps == 1
        assert result.losses[0] == pytest.approx(expected.item(), rel=1e-4), way.keys()
    record = json.loads((tmp_path / "a" / "train.json").read_text())
    assert record["objective"] == objective.settings()
    assert record["preference"] == json.loads(json.dumps(pref.to_dict()))
