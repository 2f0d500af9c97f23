"""Training with trl's DPOTrainer: saved artifacts, consistency with gradproj's own DPO loss."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE

from gradproj.core.data import pairs_from_records
from gradproj.core.logprobs import pair_logprobs
from gradproj.core.objectives import DPOLoss
from gradproj.core.errors import GradprojError
from gradproj.training.evaluate import evaluate
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.tokens import tokenize_pairs
from gradproj.training.train import TrainSettings, load_optimizer_state, train_adapter


def _pairs():
    return pairs_from_records([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE])


def test_train_saves_adapter_optimizer_schedule_and_settings(tiny_llama, tmp_path):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    pairs = _pairs()
    settings = TrainSettings(epochs=3, lr=5e-2, batch_size=2, max_length=64)
    result = train_adapter(loaded, pairs, settings, tmp_path / "theta", progress=False)
    out = tmp_path / "theta"
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors",
            "lr_schedule.json", "train.json"} <= {p.name for p in out.iterdir()}
    assert result.steps == 9 and len(result.losses) == 9
    lrs = json.loads((out / "lr_schedule.json").read_text())["lr"]
    assert len(lrs) == 9 and lrs[0] == pytest.approx(5e-2) and lrs[-1] < lrs[0]
    info = json.loads((out / "train.json").read_text())
    assert info["settings"]["lr"] == 5e-2 and info["n_pairs"] == len(pairs)

    state, meta = load_optimizer_state(out)
    assert set(state) == set(loaded.lora_parameters())   # mapped by name, every LoRA tensor
    name, p = next(iter(loaded.lora_parameters().items()))
    assert state[name]["exp_avg_sq"].shape == p.shape
    assert meta["step"] == 9 and meta["betas"] == (0.9, 0.999)

    # training on the pairs separates them: reward accuracy on the training pairs is perfect
    assert evaluate(loaded, pairs, max_length=64).accuracy == 1.0
    # the saved adapter reloads to the same model
    again = load_model(ModelSettings(model=tiny_llama, adapter=str(out), device="cpu"))
    assert again.adapter_fingerprint() == loaded.adapter_fingerprint() == info[
        "adapter_fingerprint"]


def test_trl_loss_equals_gradproj_dpo_loss(tiny_llama, tmp_path):
    """The first logged training loss is gradproj's mean DPO loss at the initial adapter:
    trl sees exactly the tokens gradproj scores."""
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(3))
    pairs = _pairs()
    tok = tokenize_pairs(pairs, loaded.tokenizer, 64).pairs
    expected = DPOLoss(0.1)(pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id))
    result = train_adapter(loaded, pairs, TrainSettings(epochs=1, lr=1e-3, batch_size=len(pairs),
                                                        max_length=64), tmp_path / "a",
                           progress=False)
    assert result.losses[0] == pytest.approx(expected.mean().item(), rel=1e-4)


def test_train_refuses_non_empty_output(tiny_llama, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    with pytest.raises(GradprojError, match="exists and is not empty"):
        train_adapter(loaded, _pairs(), TrainSettings(max_length=64), tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]   # no temporary folder left behind


def test_settings_are_validated():
    with pytest.raises(GradprojError, match="--lr must be > 0"):
        TrainSettings(lr=0)
    with pytest.raises(GradprojError, match="--epochs"):
        TrainSettings(epochs=-1)
