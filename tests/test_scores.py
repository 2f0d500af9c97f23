"""IRM and LossDiff against hand computation from two adapters (token loops, float64)."""

from __future__ import annotations

import math

import numpy as np
from helpers import SAMPLE, loop_logprob, saved_adapter

from gradproj.store.build import StoreSettings, build_store
from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from gradproj.attribution.scores import ScoreTable, irm_from_store, score_pairs
from gradproj.core.tokens import tokenize_pairs

BETA = 0.1


def _pairs():
    return pairs_from_records([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE])


def _hand_logprobs(model_dir, adapter, pairs):
    """(chosen, rejected) log-probs per pair by a token loop; adapter None = reference."""
    loaded = load_model(ModelSettings(model=model_dir, adapter=adapter, device="cpu"))
    tok = tokenize_pairs(pairs, loaded.tokenizer, 64).pairs
    model = loaded.model if adapter else loaded.model.get_base_model()
    return [(loop_logprob(model, p.prompt_ids, p.chosen_ids),
             loop_logprob(model, p.prompt_ids, p.rejected_ids)) for p in tok]


def test_irm_and_lossdiff_equal_hand_computation(tiny_llama, tmp_path):
    theta = saved_adapter(tiny_llama, tmp_path / "theta", seed=1)
    theta_v = saved_adapter(tiny_llama, tmp_path / "theta_v", seed=2)
    pairs = _pairs()
    ref = _hand_logprobs(tiny_llama, None, pairs)
    pt = _hand_logprobs(tiny_llama, theta, pairs)
    pv = _hand_logprobs(tiny_llama, theta_v, pairs)

    def h(pol, i):
        return BETA * ((pol[i][0] - ref[i][0]) - (pol[i][1] - ref[i][1]))

    def loss(x):
        return math.log1p(math.exp(-x))

    irm = [h(pt, i) for i in range(len(pairs))]
    lossdiff = [loss(h(pt, i)) - loss(h(pv, i)) for i in range(len(pairs))]

    loaded = load_model(ModelSettings(model=tiny_llama, adapter=theta, device="cpu"))
    table = score_pairs(loaded, pairs, theta_v, PreferenceSettings(beta=BETA, max_length=64),
                        batch_size=4)
    assert np.allclose(table["irm"], irm, atol=1e-5)
    assert np.allclose(table["lossdiff"], lossdiff, atol=1e-5)
    assert np.allclose(table["loss_theta"] - table["loss_aux"], table["lossdiff"])
    # θ is still the active adapter afterwards, and θ_V is gone from the model
    assert loaded.model.active_adapter == "default" and "aux" not in loaded.model.peft_config

    # IRM from a store built at θ needs no forward pass and agrees
    store = build_store(loaded, pairs, StoreSettings(proj_dim=32), tmp_path / "s",
                        pref=PreferenceSettings(beta=BETA, max_length=64),
                        progress=False)
    ids, h_store = irm_from_store(store)
    assert ids == table.ids and np.allclose(h_store, irm, atol=1e-5)


def test_score_table_roundtrip_and_missing_rows(tmp_path):
    t = ScoreTable(["a", "b", "c"])
    t.add("irm", ["c", "a"], [3.0, 1.0])
    assert np.isnan(t["irm"][1]) and t["irm"][2] == 3.0
    t.write(tmp_path / "s.parquet")
    back = ScoreTable.read(tmp_path / "s.parquet")
    assert back.ids == ["a", "b", "c"] and np.array_equal(back["irm"], t["irm"], equal_nan=True)
    assert not list(tmp_path.glob("*.tmp"))
