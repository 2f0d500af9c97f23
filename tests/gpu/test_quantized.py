"""A bitsandbytes-quantized base (QLoRA): per-pair gradients of the LoRA weights on top of a
4-bit (and 8-bit) base equal an autograd loop on the same quantized model.

Both sides run the same dequantized weights, so in float32 compute they agree to float
rounding; with activation checkpointing and a token budget too. Needs CUDA and bitsandbytes
(``pip install 'gradproj[quant]'``).
"""

from __future__ import annotations

import pytest
import torch
from helpers import SAMPLE, random_rows, save_tiny

from gradproj.core.data import pairs_from_records
from gradproj.core.model import LoraSettings, ModelSettings, load_model
from gradproj.core.objectives import DPO
from gradproj.core.tokens import collate, longest_row, token_batches, tokenize_pairs
from gradproj.gradients.perpair import PerPairGradients, per_pair_gradients_loop

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama-q"), "llama", chat=True)


def _rel_err(got, want):
    return ((got - want).norm(dim=1) / want.norm(dim=1)).max().item()


def _quantized(folder, flag, dtype, **kw):
    pytest.importorskip("bitsandbytes")
    loaded = load_model(ModelSettings(model=folder, device="cuda", dtype=dtype,
                                      lora=LoraSettings(targets=TARGETS), **{flag: True}, **kw))
    base = loaded.model.get_base_model()
    kinds = {type(m).__name__ for m in base.modules()}
    assert {"Linear4bit", "Linear8bitLt"} & kinds     # the base really is quantized
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # B ≠ 0, drawn on the CPU and copied to the device
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g).to(p) * 0.5)
    return loaded


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_quantized_base_per_pair_gradients_equal_an_autograd_loop(folder, flag,
                                                                    checkpointing):
    loaded = _quantized(folder, flag, "float32", grad_checkpointing=checkpointing)
    assert all(p.dtype == torch.float32 for p in loaded.lora_parameters().values())
    records = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE]
    tok = tokenize_pairs(pairs_from_records(records + random_rows(6, seed=3)),
                         loaded.tokenizer, 64).pairs
    pad = loaded.tokenizer.pad_token_id
    want = torch.cat(list(per_pair_gradients_loop(loaded.model, DPO(),
                                                  collate(tok, pad)).values()), dim=1)
    assert torch.count_nonzero(want) > 0
    with PerPairGradients(loaded, DPO()) as pg:
        whole = pg(collate(tok, pad))
        budgeted = torch.zeros_like(want)
        budget = 3 * max(longest_row(p) for p in tok)
        for where, batch in token_batches(tok, 4, pad, max_tokens=budget):
            budgeted[where] = pg(batch).flat()
    assert whole.finite.all()
    assert _rel_err(whole.flat(), want) <= 1e-5
    assert _rel_err(budgeted, want) <= 1e-5


def test_quantized_base_bfloat16_compute_gives_fp32_gradients_close_to_the_loop(folder):
    loaded = _quantized(folder, "load_in_4bit", "auto")
    assert loaded.settings.dtype == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8
                                     else "float32")
    tok = tokenize_pairs(pairs_from_records(
        [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE]),
        loaded.tokenizer, 64).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    want = torch.cat(list(per_pair_gradients_loop(loaded.model, DPO(), batch).values()), dim=1)
    with PerPairGradients(loaded, DPO()) as pg:
        got = pg(batch)
    assert all(g.dtype == torch.float32 for g in got.grads.values())
    cos = torch.nn.functional.cosine_similarity(got.flat(), want.float(), dim=1)
    assert cos.min().item() > 0.99
