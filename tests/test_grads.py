"""Per-pair LoRA gradients: layout, given reference log-probs, dtypes, hooks lifecycle, Adam
preconditioning (hooks vs an autograd loop, per objective: tests/test_objectives.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLE, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.logprobs import PairLogProbs, pair_logprobs, sequence_logprobs
from gradproj.core.objectives import DPO
from gradproj.core.errors import GradprojError
from gradproj.gradients.perpair import PerPairGradients, adam_precondition, lora_layout, per_pair_gradients_loop
from gradproj.core.model import LoraSettings, ModelSettings, load_model
from gradproj.core.tokens import collate, tokenize_pairs

LLAMA_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")
GPT2_TARGETS = ("c_attn", "c_fc")


def _load(folder, targets, dtype="float32"):
    loaded = load_model(ModelSettings(model=folder, device="cpu", dtype=dtype,
                                      lora=LoraSettings(targets=targets)))
    perturb_lora(loaded.model)   # B ≠ 0, so gradients wrt A are non-zero too
    tok = tokenize_pairs(pairs_from_records(
        [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE]),
        loaded.tokenizer, max_length=64).pairs
    return loaded, tok


def _rel_err(got, want):
    """Per-pair ||got − want|| / ||want||, [B]."""
    return (got - want).norm(dim=1) / want.norm(dim=1)


def _flat(grads):
    return torch.cat(list(grads.values()), dim=1)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return _load(tiny_llama, LLAMA_TARGETS)


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return _load(tiny_gpt2, GPT2_TARGETS)


def test_given_reference_logprobs_give_the_same_gradients(gpt2):
    loaded, tok = gpt2
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    ref = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id)
    with PerPairGradients(loaded.model, DPO()) as pg:
        a = pg(batch)
        b = pg(batch, ref_logprobs=(ref.ref_chosen, ref.ref_rejected))
        with pytest.raises(GradprojError, match="ref_logprobs have 5 and 6 entries"):
            pg(batch, ref_logprobs=(ref.ref_chosen[:5], ref.ref_rejected))
    assert _rel_err(a.flat(), b.flat()).max().item() <= 1e-6


def test_batch_invariance(llama):
    loaded, tok = llama
    pad = loaded.tokenizer.pad_token_id
    loss_fn = DPO()
    with PerPairGradients(loaded, loss_fn) as pg:
        per_size = {}
        for size in (1, 3, 6):
            parts = [pg(collate(tok[i:i + size], pad)).flat() for i in range(0, len(tok), size)]
            per_size[size] = torch.cat(parts)
    assert _rel_err(per_size[3], per_size[1]).max().item() <= 1e-5
    assert _rel_err(per_size[6], per_size[1]).max().item() <= 1e-5


def test_non_finite_pair_is_zeroed_and_flagged(gpt2):
    loaded, tok = gpt2
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    ref = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id)
    chosen = ref.ref_chosen.clone()
    chosen[2] = float("nan")
    with PerPairGradients(loaded, DPO()) as pg:
        clean = pg(batch, (ref.ref_chosen, ref.ref_rejected))
        dirty = pg(batch, (chosen, ref.ref_rejected))
    assert dirty.finite.tolist() == [True, True, False, True, True, True]
    assert torch.isnan(dirty.losses[2])
    flat = dirty.flat()
    assert torch.isfinite(flat).all()
    assert (flat[2] == 0).all()
    keep = [0, 1, 3, 4, 5]
    assert _rel_err(flat[keep], clean.flat()[keep]).max().item() <= 1e-6


def test_bf16_model_gives_fp32_gradients_close_to_fp32(tiny_llama, llama):
    loaded32, tok = llama
    loaded16, _ = _load(tiny_llama, LLAMA_TARGETS, dtype="bfloat16")
    batch = collate(tok, loaded32.tokenizer.pad_token_id)
    with PerPairGradients(loaded32, DPO()) as pg:
        g32 = pg(batch)
    with PerPairGradients(loaded16, DPO()) as pg:
        g16 = pg(batch)
    assert all(g.dtype == torch.float32 for g in g16.grads.values())
    assert g16.finite.all()
    cos = torch.nn.functional.cosine_similarity(g16.flat(), g32.flat(), dim=1)
    assert cos.min().item() > 0.99


def test_grad_fields_untouched_and_hooks_removed(gpt2):
    loaded, tok = gpt2
    model = loaded.model
    batch = collate(tok[:2], loaded.tokenizer.pad_token_id)

    def n_hooks():
        return sum(len(m._forward_hooks) for m in model.modules())

    before = n_hooks()
    pg = PerPairGradients(loaded, DPO())
    assert n_hooks() == before + len(lora_layout(model))
    pg(batch)
    assert all(p.grad is None for p in model.parameters())
    pg.close()
    assert n_hooks() == before
    pg.close()   # idempotent
    with pytest.raises(GradprojError, match="closed"):
        pg(batch)
    with PerPairGradients(loaded, DPO()):
        assert n_hooks() > before
    assert n_hooks() == before
    # hooks installed but not in a call: ordinary training-style backward is unaffected
    with PerPairGradients(loaded, DPO()):
        sequence_logprobs(model, batch).sum().backward()
    assert all(p.grad is not None for p in loaded.lora_parameters().values())
    model.zero_grad(set_to_none=True)


def test_only_plain_lora_parameters_are_supported(gpt2):
    loaded, _ = gpt2
    bias = next(p for n, p in loaded.model.named_parameters() if n.endswith("ln_f.bias"))
    bias.requires_grad_(True)
    try:
        with pytest.raises(GradprojError, match="ln_f.bias is not the weight of a LoRA"):
            PerPairGradients(loaded, DPO())
    finally:
        bias.requires_grad_(False)


def test_adam_precondition_matches_formula():
    torch.manual_seed(0)
    grads = {"a.lora_A.default.weight": torch.randn(3, 4),
             "a.lora_B.default.weight": torch.randn(3, 2)}
    state = {"a.lora_A.default.weight": {"exp_avg": torch.randn(2, 2),
                                         "exp_avg_sq": torch.rand(2, 2)},
             "a.lora_B.default.weight": {"exp_avg": torch.randn(2, 1),
                                         "exp_avg_sq": torch.rand(2, 1)}}
    meta = {"step": 5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    out = adam_precondition(grads, state, meta)
    for name, g in grads.items():
        m, v = state[name]["exp_avg"].reshape(-1), state[name]["exp_avg_sq"].reshape(-1)
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                mm = 0.9 * m[j].item() + 0.1 * g[i, j].item()
                vv = 0.999 * v[j].item() + 0.001 * g[i, j].item() ** 2
                assert out[name][i, j].item() == pytest.approx(mm / (vv ** 0.5 + 1e-8), rel=1e-5)
    with pytest.raises(GradprojError, match="no Adam moments for parameter a.lora_B.default"):
        adam_precondition(grads, {"a.lora_A.default.weight": state["a.lora_A.default.weight"]},
                          meta)
    with pytest.raises(GradprojError, match="has 4 values, the gradient 2"):
        adam_precondition({"a.lora_B.default.weight": grads["a.lora_B.default.weight"]},
                          {"a.lora_B.default.weight": state["a.lora_A.default.weight"]}, meta)
