"""Training with trl's DPOTrainer: saved artifacts, consistency with gradproj's own DPO loss."""

from __future__ import annotations

import json

import pytest
from helpers import SAMPLE

from gradproj.core.data import pairs_from_records
from gradproj.core.objectives import PreferenceSettings
from gradproj.core.errors import GradprojError
from gradproj.training.evaluate import evaluate
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.errors import IncompatibleStore
from gradproj.training.train import (
    TrainSettings,
    adapter_objective,
    load_optimizer_state,
    train_adapter,
)


PREF = PreferenceSettings(max_length=64)


def _pairs():
    return pairs_from_records([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE])


def test_train_saves_adapter_optimizer_schedule_and_settings(tiny_llama, tmp_path):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    pairs = _pairs()
    settings = TrainSettings(epochs=3, lr=5e-2, batch_size=2)
    result = train_adapter(loaded, pairs, settings, tmp_path / "theta", pref=PREF,
                           progress=False)
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
    assert evaluate(loaded, pairs, PREF).accuracy == 1.0
    # the saved adapter reloads to the same model
    again = load_model(ModelSettings(model=tiny_llama, adapter=str(out), device="cpu"))
    assert again.adapter_fingerprint() == loaded.adapter_fingerprint() == info[
        "adapter_fingerprint"]


def test_train_refuses_non_empty_output(tiny_llama, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    with pytest.raises(GradprojError, match="exists and is not empty"):
        train_adapter(loaded, _pairs(), TrainSettings(), tmp_path / "x", pref=PREF)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]   # no temporary folder left behind


def test_settings_are_validated():
    with pytest.raises(GradprojError, match="--lr must be > 0"):
        TrainSettings(lr=0)
    with pytest.raises(GradprojError, match="--epochs"):
        TrainSettings(epochs=-1)


def test_continuing_an_adapter_of_another_objective_is_refused(tiny_llama, tmp_path):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    ipo = PreferenceSettings(loss="ipo", beta=0.5, max_length=64)
    train_adapter(loaded, _pairs(), TrainSettings(batch_size=6), tmp_path / "ipo", pref=ipo,
                  progress=False)
    assert adapter_objective(tmp_path / "ipo") == {"name": "ipo", "beta": 0.5, "params": {}}
    again = load_model(ModelSettings(model=tiny_llama, adapter=str(tmp_path / "ipo"),
                                     device="cpu"))
    with pytest.raises(IncompatibleStore, match="made with objective ipo \(beta=0.5\), "
                                                "requested dpo \(beta=0.1\)"):
        train_adapter(again, _pairs(), TrainSettings(), tmp_path / "dpo", pref=PREF)
    assert not (tmp_path / "dpo").exists()
    train_adapter(again, _pairs(), TrainSettings(batch_size=6), tmp_path / "dpo", pref=PREF,
                  progress=False, force_objective=True)
    assert adapter_objective(tmp_path / "dpo")["name"] == "dpo"


def test_a_train_record_before_objectives_reads_as_dpo(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps({"settings": {"beta": 0.25, "lr": 1e-3}}))
    assert adapter_objective(tmp_path) == {"name": "dpo", "beta": 0.25, "params": {}}
    assert adapter_objective(tmp_path / "elsewhere") is None      # not a gradproj adapter



def test_batches_record_every_pair_once_an_epoch_in_the_seeds_order(tiny_llama, tmp_path):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    pairs = _pairs()
    ids = sorted(p.id for p in pairs)
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        res = train_adapter(loaded, pairs, TrainSettings(epochs=2, lr=1e-3, batch_size=2,
                                                         seed=seed),
                            tmp_path / name, pref=PREF, progress=False)
        assert len(res.batches) == res.steps == 2 * -(-len(pairs) // 2)
        half = len(res.batches) // 2
        for epoch in (res.batches[:half], res.batches[half:]):
            assert sorted(i for b in epoch for i in b) == ids
        runs[name] = res.batches
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
