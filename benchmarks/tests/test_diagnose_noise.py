"""benchmarks.harness.noise.norm_diagnosis and its script benchmarks/diagnose_noise.py: AUROC of
IF, of the cosine (IF / ‖g‖) and of −‖g‖, per task."""

from __future__ import annotations


import numpy as np


from benchmarks import diagnose_noise as D  # noqa: E402

from benchmarks.harness.noise import norm_diagnosis, norm_diagnosis_lines  # noqa: E402


def _auroc_loop(scores, positive):
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_diagnose_separates_norm_from_direction():
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"{'ab'[i % 2]}-{i}" for i in range(n)]
    flipped = rng.random(n) < 0.3
    flipped[:4] = [True, False, True, False]
    # flipped pairs: large gradients pointing slightly away from the validation direction
    norm = np.where(flipped, 5.0, 1.0) * rng.uniform(0.5, 1.5, n)
    cos = np.where(flipped, -0.05, 0.05) + 0.01 * rng.standard_normal(n)
    score = norm * cos
    score[7] = np.nan                     # a non-finite row is left out everywhere
    table = {"ids": ids, "flipped": flipped.tolist(),
             "if": [None if not np.isfinite(s) else float(s) for s in score]}
    res = norm_diagnosis(table, dict(zip(ids, norm.tolist())))

    ok = np.isfinite(score)
    assert res["all"]["n"] == int(ok.sum())
    assert np.isclose(res["all"]["cosine"], _auroc_loop(cos[ok], ~flipped[ok]))
    assert np.isclose(res["all"]["if"], _auroc_loop(score[ok], ~flipped[ok]))
    assert np.isclose(res["all"]["-norm"], _auroc_loop(-norm[ok], ~flipped[ok]))
    assert res["all"]["cosine"] > 0.99 and res["all"]["-norm"] > 0.95
    for task in ("a", "b"):
        m = ok & np.array([i.startswith(task + "-") for i in ids])
        assert res[task]["n"] == int(m.sum())
        assert np.isclose(res[task]["cosine"], _auroc_loop(cos[m], ~flipped[m]))
    assert "| all |" in "\n".join(norm_diagnosis_lines(res))


class _FakeStore:
    def __init__(self, ids, norms, settings):
        self._ids, self._norms = ids, np.asarray(norms, np.float32)
        self.manifest = {"settings": settings}

    def ids(self):
        return list(self._ids)

    def column(self, name):
        assert name == "norm"
        return self._norms


def test_main_refuses_a_store_of_another_run(tmp_path, monkeypatch, capsys):
    import json

    import gradproj.store.shards

    ids = ["a-0", "a-1", "b-2", "b-3"]
    res = {"settings": {"flip": 0.25}, "data": "fake", "store": {"proj_dim": 64, "max_length": 32},
           "score_table": {"ids": ids, "flipped": [True, False, True, False],
                           "if": [2.0, 1.0, -1.0, None], "lossdiff": [1, 2, 3, 4]}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(res))
    (tmp_path / "work" / "flip-0.25" / "select" / "store").mkdir(parents=True)
    settings = {"proj_dim": 64, "max_length": 32}
    stores = {"store": _FakeStore(ids, [4.0, 1.0, 2.0, 1.0], settings)}
    monkeypatch.setattr(gradproj.store.shards, "Store", lambda root, verify: stores["store"])
    argv = ["--json", str(path), "--work", str(tmp_path / "work")]

    out = tmp_path / "diag.json"
    assert D.main([*argv, "--out", str(out)]) == 0
    diag = json.loads(out.read_text())["per_task"]["all"]
    assert diag["n"] == 3 and diag["n_flipped"] == 2          # the None score is left out
    assert diag["cosine"] == 1.0      # cos: clean a-1 1.0 above flipped a-0 0.5 and b-2 -0.5
    assert diag["if"] == 0.5          # IF: a-0 2.0 > a-1 1.0 > b-2 -1.0

    stores["store"] = _FakeStore(["a-0", "a-1"], [1.0, 1.0], settings)   # scored pairs missing
    assert D.main(argv) == 2 and "not the store" in capsys.readouterr().err
    stores["store"] = _FakeStore(ids, [1.0] * 4, {"proj_dim": 128, "max_length": 32})
    assert D.main(argv) == 2 and "settings" in capsys.readouterr().err
    assert D.main(["--json", str(path), "--work", str(tmp_path / "nowhere")]) == 2
