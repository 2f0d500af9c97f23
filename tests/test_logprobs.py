"""DPO core against hand computation: token loops, margins, losses, the disabled adapter."""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLE, loop_logprob, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.logprobs import pair_logprobs, sequence_logprobs
from gradproj.core.objectives import DPO
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


def test_fresh_adapter_reference_gives_zero_margin(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, max_length=64).pairs
    lp = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=4)
    assert torch.equal(lp.policy_chosen, lp.ref_chosen)   # LoRA B = 0: adapter is a no-op
    assert DPO().margin(lp).abs().max().item() == 0.0
    perturb_lora(loaded.model)
    lp2 = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, batch_size=4,
                        reference=(lp.ref_chosen, lp.ref_rejected))
    assert DPO().margin(lp2).abs().max().item() > 1e-3
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


def test_lengths_are_response_token_counts_and_reference_free_skips_the_pass(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    perturb_lora(loaded.model)
    tok = tokenize_pairs(_pairs(), loaded.tokenizer, max_length=64).pairs
    lp = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id)
    assert lp.len_chosen.tolist() == [float(len(p.chosen_ids)) for p in tok]
    assert lp.len_rejected.tolist() == [float(len(p.rejected_ids)) for p in tok]
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    b = len(tok)
    assert batch.response_lengths()[:b].tolist() == lp.len_chosen.tolist()
    assert batch.response_lengths()[b:].tolist() == lp.len_rejected.tolist()
    free = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id, with_reference=False)
    assert free.ref_chosen.abs().max().item() == 0.0 and lp.ref_chosen.abs().min().item() > 0
    assert torch.equal(free.policy_chosen, lp.policy_chosen)

