"""DPO core against hand computation: token loops, margins, losses, the disabled adapter."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SAMPLE, loop_logprob, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.logprobs import PairLogProbs, pair_logprobs, sequence_logprobs
from gradproj.core.objectives import DPOLoss, SLiCLoss, make_loss
from gradproj.core.errors import GradprojError
from gradproj.core.model import LoraSettings, ModelSettings, load_model
from gradproj.core.tokens import collate, tokenize_pairs


def _pairs():
    return pairs_from_records([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE])


@pytest.mark.parametrize("arch,targets", [("tiny_llama", ("q_proj", "v_proj", "up_proj")),
                                          ("tiny_gpt2", ("c_attn", "c_fc"))])
def test_sequence_logprobs_equal_token_loop(arch, targets, request):
    loaded = load_model(ModelSettings(model=request.getfixturevalue(arch), device="cpu",
                                      lora=LoraSettings(targets=targets)))
    perturb_lora(loaded.model)
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, max_length=64).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)   # mixed lengths → right padding
    assert (batch.attention_mask == 0).any()
    with torch.no_grad():
        lp = sequence_logprobs(loaded.model, batch)
    for i, p in enumerate(tok):
        assert lp[i].item() == pytest.approx(loop_logprob(loaded.model, p.prompt_ids,
                                                           p.chosen_ids), abs=1e-5)
        assert lp[len(tok) + i].item() == pytest.approx(
            loop_logprob(loaded.model, p.prompt_ids, p.rejected_ids), abs=1e-5)


def test_margin_and_losses_match_hand_computation():
    lp = PairLogProbs(torch.tensor([-3.0, -10.0]), torch.tensor([-5.0, -2.0]),
                      torch.tensor([-4.0, -9.0]), torch.tensor([-4.5, -2.5]))
    beta = 0.1
    # h = β[(πw − rw) − (πl − rl)]
    expected_h = [beta * ((-3 + 4) - (-5 + 4.5)), beta * ((-10 + 9) - (-2 + 2.5))]
    dpo = DPOLoss(beta)
    assert dpo.margin(lp).tolist() == pytest.approx(expected_h, abs=1e-7)
    assert dpo(lp).tolist() == pytest.approx(
        [-math.log(1 / (1 + math.exp(-h))) for h in expected_h], abs=1e-7)
    slic = SLiCLoss(beta, delta=1.0)
    assert slic(lp).tolist() == pytest.approx([max(0.0, 1.0 - h) for h in expected_h], abs=1e-7)
    assert SLiCLoss(beta, delta=0.1)(lp).tolist() == pytest.approx([0.0, 0.1 + 0.15], abs=1e-7)


def test_dpo_loss_is_stable_for_large_margins():
    h = torch.tensor([-1000.0, 0.0, 1000.0])
    out = DPOLoss().from_margin(h)
    assert out.tolist() == pytest.approx([1000.0, math.log(2), 0.0], abs=1e-6)


def test_loss_settings_are_validated():
    with pytest.raises(GradprojError, match="--beta must be > 0"):
        DPOLoss(0.0)
    with pytest.raises(GradprojError, match="--loss must be one of dpo, slic"):
        make_loss("ipo")


def test_fresh_adapter_reference_gives_zero_margin(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, max_length=64).pairs
    lp = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=4)
    assert torch.equal(lp.policy_chosen, lp.ref_chosen)   # LoRA B = 0: adapter is a no-op
    assert DPOLoss().margin(lp).abs().max().item() == 0.0
    perturb_lora(loaded.model)
    lp2 = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=4,
                        reference=(lp.ref_chosen, lp.ref_rejected))
    assert DPOLoss().margin(lp2).abs().max().item() > 1e-3
    # the reference computed with the adapter disabled after the change is unchanged
    lp3 = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=3)
    assert torch.allclose(lp3.ref_chosen, lp.ref_chosen, atol=1e-6)
    assert torch.allclose(lp3.policy_chosen, lp2.policy_chosen, atol=1e-6)


def test_batch_size_does_not_change_logprobs(tiny_gpt2):
    loaded = load_model(ModelSettings(model=tiny_gpt2, device="cpu",
                                      lora=LoraSettings(targets=("c_attn",))))
    perturb_lora(loaded.model)
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, max_length=64).pairs
    a = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=1)
    b = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=6)
    assert torch.allclose(a.policy_rejected, b.policy_rejected, atol=1e-5)
