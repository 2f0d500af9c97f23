"""A store built on CUDA equals the one built on the CPU, and CUDA validation features do too.

Same tiny model, same adapter, same pairs, same projection seed: the rows differ only by the
floating-point order of the two devices (and the float16 storage), so the features agree to
float16 precision and the IF rankings agree almost exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import random_rows, saved_adapter, write_jsonl
from scipy.stats import spearmanr

from gradproj.store.build import StoreSettings, build_store
from gradproj.core.data import load_pairs
from gradproj.attribution.influence import (
    InfluenceSettings,
    mean_influence,
    top_influences,
    validation_features,
)
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_store_and_query_equal_cpu(tiny_llama, tmp_path):
    adapter = saved_adapter(tiny_llama, tmp_path / "adapter")
    train = load_pairs(write_jsonl(tmp_path / "train.jsonl", random_rows(40, seed=1)))
    val = load_pairs(write_jsonl(tmp_path / "val.jsonl", random_rows(6, seed=7)))
    settings = StoreSettings(proj_dim=512, batch_size=5, shard_size=16)
    out = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(ModelSettings(model=tiny_llama, adapter=adapter, device=device))
        store = build_store(loaded, train, settings, tmp_path / f"store-{device}",
                            pref=PreferenceSettings(max_length=32), progress=False)
        vf = validation_features(store, loaded, val)
        out[device] = (store, vf, mean_influence(store, vf))
    (cs, cv, ci), (gs, gv, gi) = out["cpu"], out["cuda"]
    a, b = cs.features().astype(np.float64), gs.features().astype(np.float64)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 5e-3
    assert cs.ids() == gs.ids() and cs.status_counts() == gs.status_counts()
    for col in ("loss", "policy_chosen", "ref_rejected"):
        assert np.allclose(cs.rows[col], gs.rows[col], rtol=1e-4, atol=1e-4)
    assert np.linalg.norm(cv.features - gv.features) / np.linalg.norm(cv.features) < 1e-3
    assert spearmanr(ci, gi).statistic > 0.999
    top_c = top_influences(cs, cv, InfluenceSettings(top_k=3, memory_budget_mb=0))
    top_g = top_influences(gs, gv, InfluenceSettings(top_k=3, memory_budget_mb=0))
    agree = np.mean([r["helpful"][0]["id"] == s["helpful"][0]["id"]
                     for r, s in zip(top_c, top_g, strict=True)])
    assert agree >= 5 / 6
