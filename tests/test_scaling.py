"""Memory that scales, exactly: per-pair gradients with sdpa and eager attention, with
activation checkpointing on and off, and under token-budget batching equal an autograd loop
(fp32, ≤ 1e-5 relative per pair) on tiny Llama, Qwen2 and GPT-2 models; a store built with
checkpointing and a token budget equals one built without; dtype "auto" is resolved and
recorded; a quantized base is refused on the CPU in one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from helpers import SAMPLE, perturb_lora, random_rows, save_tiny, save_tiny_qwen2, write_jsonl

from gradproj.attribution.influence import validation_features
from gradproj.core.data import load_pairs, pairs_from_records
from gradproj.core.errors import BadInput, IncompatibleStore
from gradproj.core.logprobs import pair_logprobs
from gradproj.core.model import (
    LoraSettings,
    ModelSettings,
    checkpoint_layers,
    load_model,
    resolve_dtype,
)
from gradproj.core.objectives import DPO, PreferenceSettings
from gradproj.core.tokens import collate, longest_row, token_batches, tokenize_pairs
from gradproj.gradients.perpair import PerPairGradients, per_pair_gradients_loop
from gradproj.store.build import StoreSettings, build_store

TARGETS = {"llama": ("q_proj", "v_proj", "up_proj", "down_proj"),
           "qwen2": ("q_proj", "k_proj", "o_proj", "gate_proj"),
           "gpt2": ("c_attn", "c_proj", "c_fc")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    return {"llama": save_tiny(root / "llama", "llama", chat=True),
            "qwen2": save_tiny_qwen2(root / "qwen2", chat=True),
            "gpt2": save_tiny(root / "gpt2", "gpt2")}


def _records(n=0):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE]
    return rows + random_rows(n, seed=3)


def _load(folder, arch, **kw):
    kw = {"dtype": "float32", **kw}
    loaded = load_model(ModelSettings(model=folder, device="cpu",
                                      lora=LoraSettings(targets=TARGETS[arch]), **kw))
    perturb_lora(loaded.model)   # B ≠ 0: the policy differs from the reference
    return loaded


def _rel_err(got, want):
    """max over pairs of ||got − want|| / ||want||."""
    return ((got - want).norm(dim=1) / want.norm(dim=1)).max().item()


def _flat(grads):
    return torch.cat(list(grads.values()), dim=1)


def _lora_calls(model):
    """A counter of forward calls of the first LoRA factor (and the hook's handle)."""
    calls = []
    first = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
    return calls, first.register_forward_hook(lambda *a: calls.append(1))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_per_pair_gradients_equal_an_autograd_loop(folders, arch, attn, checkpointing):
    loaded = _load(folders[arch], arch, attn_implementation=attn,
                   grad_checkpointing=checkpointing)
    assert loaded.model.get_base_model().config._attn_implementation == attn
    tok = tokenize_pairs(pairs_from_records(_records(4)), loaded.tokenizer, 64).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)     # 10 pairs of unequal lengths
    want = _flat(per_pair_gradients_loop(loaded.model, DPO(), batch))
    calls, handle = _lora_calls(loaded.model)
    with PerPairGradients(loaded, DPO()) as pg:    # checkpointing from the loaded settings
        assert pg.checkpointing is checkpointing
        got = pg(batch)
    handle.remove()
    # checkpointing really ran: the layer was recomputed in the backward pass
    assert len(calls) == (2 if checkpointing else 1)
    assert got.finite.all() and torch.count_nonzero(want) > 0
    assert _rel_err(got.flat(), want) <= 1e-5
    assert all(p.grad is None for p in loaded.model.parameters())


def test_checkpointing_leaves_the_model_as_it_was(folders):
    loaded = _load(folders["llama"], "llama")
    layers = checkpoint_layers(loaded.model)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    tok = tokenize_pairs(pairs_from_records(_records()), loaded.tokenizer, 64).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    with PerPairGradients(loaded, DPO(), checkpointing=True) as pg:
        a = pg(batch).flat()
    assert all("forward" not in m.__dict__ for m in layers)   # the wrapper is gone
    with PerPairGradients(loaded, DPO(), checkpointing=False) as pg:
        b = pg(batch).flat()
    assert _rel_err(a, b) <= 1e-5


def test_token_batches_cover_every_pair_within_the_budget(folders):
    loaded = _load(folders["llama"], "llama")
    tok = tokenize_pairs(pairs_from_records(_records(30)), loaded.tokenizer, 64).pairs
    budget = 4 * max(longest_row(p) for p in tok)
    groups = list(token_batches(tok, 8, 0, max_tokens=budget))
    seen = sorted(i for where, _ in groups for i in where)
    assert seen == list(range(len(tok)))
    for where, batch in groups:
        assert batch.ids == [tok[i].id for i in where]
        assert len(where) <= 8
        assert len(where) == 1 or batch.input_ids.numel() <= budget
    assert [w for w, _ in groups] != [w for w, _ in token_batches(tok, 8, 0)]   # regrouped
    padded = sum(b.input_ids.numel() for _, b in groups)
    plain = sum(b.input_ids.numel() for _, b in token_batches(tok, 8, 0))
    assert padded < plain      # grouping by length cuts padding
    assert [w for w, _ in token_batches(tok, 8, 0, max_tokens=1)] == [
        [i] for i in sorted(range(len(tok)), key=lambda i: -longest_row(tok[i]))]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_token_budget_batching_equals_an_autograd_loop(folders, arch):
    loaded = _load(folders[arch], arch, attn_implementation="sdpa")
    pad = loaded.tokenizer.pad_token_id
    tok = tokenize_pairs(pairs_from_records(_records(8)), loaded.tokenizer, 64).pairs
    want = _flat(per_pair_gradients_loop(loaded.model, DPO(), collate(tok, pad)))
    got = torch.zeros_like(want)
    budget = 3 * max(longest_row(p) for p in tok)
    with PerPairGradients(loaded, DPO(), checkpointing=True) as pg:
        for where, batch in token_batches(tok, 4, pad, max_tokens=budget):
            got[where] = pg(batch).flat()
    assert _rel_err(got, want) <= 1e-5
    plain = pair_logprobs(loaded.model, tok, pad, batch_size=4)
    budgeted = pair_logprobs(loaded.model, tok, pad, batch_size=4, max_tokens=budget)
    for name, value in vars(plain).items():
        assert torch.allclose(getattr(budgeted, name), value, rtol=1e-5, atol=1e-5), name


def test_store_with_checkpointing_and_max_tokens_equals_plain(folders, tmp_path):
    folder = folders["llama"]
    train = load_pairs(write_jsonl(tmp_path / "train.jsonl", random_rows(37, seed=1)))
    val = load_pairs(write_jsonl(tmp_path / "val.jsonl", random_rows(5, seed=7)))
    settings = StoreSettings(proj_dim=256, batch_size=6, shard_size=16, proj_batch=8)
    pref = PreferenceSettings(max_length=32)
    stores, loaded = {}, {}
    for label, kw in (("plain", {}), ("scaled", {"grad_checkpointing": True,
                                                 "max_tokens": 96})):
        loaded[label] = _load(folder, "llama", **kw)
        stores[label] = build_store(loaded[label], train, settings, tmp_path / label,
                                    pref=pref, progress=False)
    plain, scaled = stores["plain"], stores["scaled"]
    assert scaled.ids() == plain.ids() == [p.id for p in train]    # input order, all rows
    assert [s.rows for s in scaled.shards] == [s.rows for s in plain.shards]
    assert (scaled.rows["status"] == plain.rows["status"]).all()
    a = plain.features().astype(np.float64)
    b = scaled.features().astype(np.float64)
    assert np.linalg.norm(a - b, axis=1).max() / np.linalg.norm(a, axis=1).min() < 2e-3
    for col in ("loss", "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected",
                "len_chosen", "len_rejected", "norm"):
        assert np.allclose(scaled.rows[col], plain.rows[col], rtol=1e-4, atol=1e-5), col
    # the resolved dtype is recorded, and a query resolving "auto" the same way matches it
    manifest = json.loads((tmp_path / "scaled" / "manifest.json").read_text())
    assert manifest["model"]["dtype"] == "float32" == loaded["scaled"].settings.dtype
    vf_plain = validation_features(plain, loaded["plain"], val)
    vf_scaled = validation_features(plain, loaded["scaled"], val)   # cross: same spec
    assert vf_plain.ids == vf_scaled.ids
    assert np.abs(vf_plain.features - vf_scaled.features).max() <= 1e-4 * np.abs(
        vf_plain.features).max()
    other = _load(folder, "llama", dtype="bfloat16")   # model.dtype is compared first
    with pytest.raises(IncompatibleStore, match="'model.dtype'"):
        validation_features(plain, other, val)


def test_dtype_auto_is_float32_on_the_cpu(folders):
    assert ModelSettings().dtype == "auto"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    loaded = load_model(ModelSettings(model=folders["qwen2"], device="cpu"))
    assert loaded.settings.dtype == "float32" == loaded.dtype_name
    assert loaded.model.get_base_model().config._attn_implementation == "sdpa"   # not eager


@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_quantized_base_is_refused_on_the_cpu(folders, flag):
    option = "--" + flag.replace("_", "-")
    with pytest.raises(BadInput, match=f"^{option} needs a CUDA device"):
        load_model(ModelSettings(model=folders["llama"], device="cpu", **{flag: True}))


def test_quantization_settings_and_missing_bitsandbytes(folders, sample_jsonl, tmp_path,
                                                        monkeypatch):
    from click.testing import CliRunner

    from gradproj.cli import main

    with pytest.raises(BadInput, match="exclude each other"):
        ModelSettings(load_in_4bit=True, load_in_8bit=True)
    result = CliRunner().invoke(main, ["build-store", "--model", folders["llama"], "--device",
                                       "cpu", "--load-in-4bit", "--data", sample_jsonl,
                                       "--out", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "gradproj: error: --load-in-4bit needs a CUDA device (bitsandbytes); this run is on cpu"]
    assert not (tmp_path / "store").exists()
    if importlib.util.find_spec("bitsandbytes") is None:   # a CUDA device without it
        from gradproj.core import model as model_module

        monkeypatch.setattr(model_module, "resolve_device", lambda name: torch.device("cuda", 0))
        with pytest.raises(BadInput, match=r"^--load-in-8bit needs bitsandbytes: "
                                           r"pip install 'gradproj\[quant\]'$"):
            load_model(ModelSettings(model=folders["llama"], dtype="float32",
                                     load_in_8bit=True))


def test_training_with_checkpointing_equals_training_without(folders, tmp_path):
    from gradproj.training.train import TrainSettings, train_adapter

    pairs = pairs_from_records(_records())
    settings = TrainSettings(epochs=2, lr=5e-2, batch_size=3)
    out = {}
    for ck in (False, True):
        loaded = load_model(ModelSettings(model=folders["llama"], device="cpu",
                                          grad_checkpointing=ck))
        result = train_adapter(loaded, pairs, settings, tmp_path / str(ck),
                               pref=PreferenceSettings(max_length=64), progress=False)
        info = json.loads((tmp_path / str(ck) / "train.json").read_text())
        assert info["model"]["dtype"] == "float32" and info["model"]["grad_checkpointing"] is ck
        # the trainer's checkpointing and input-grad hook are undone after training
        base = loaded.model.get_base_model()
        assert not any(getattr(m, "gradient_checkpointing", False) for m in base.modules())
        assert not base.get_input_embeddings()._forward_hooks
        out[ck] = (result.losses, loaded.adapter_fingerprint(), loaded)
    assert len(out[True][0]) == 4
    assert np.allclose(out[True][0], out[False][0], rtol=1e-5, atol=1e-6)
    a, b = (torch.cat([p.detach().reshape(-1) for p in out[ck][2].lora_parameters().values()])
            for ck in (False, True))
    assert (a - b).norm() <= 1e-5 * a.norm()
