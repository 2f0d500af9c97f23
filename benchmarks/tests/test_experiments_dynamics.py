"""benchmarks.harness.dynamics on a tiny Llama: the per-step probes against evaluating by hand,
and training untouched by them; the summary and table on a hand-made trajectory."""

from __future__ import annotations

import pytest
from helpers import SAMPLE, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from benchmarks.harness import dynamics
from gradproj.evaluation import runner
from gradproj.training.train import TrainSettings

PREF = PreferenceSettings(max_length=64)
TRAINING = TrainSettings(epochs=1.0, lr=5e-2, batch_size=2, seed=0)


def test_trajectory_probes_every_step_without_changing_the_training(tiny_llama, tmp_path):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    perturb_lora(loaded.model)                                   # θ
    pairs = pairs_from_records([{"id": f"s{i}", "prompt": p, "chosen": c, "rejected": r}
                                for i, (p, c, r) in enumerate(SAMPLE)])
    train, test = pairs[:4], pairs[4:]
    cont = runner.Continuation(loaded, runner.HeldOut(loaded, test, PREF), TRAINING, PREF,
                               tmp_path)
    probes = {"heldout": cont.heldout, "flipped": runner.HeldOut(loaded, train[:2], PREF)}
    at_theta = {k: h.evaluate(loaded) for k, h in probes.items()}
    run = dynamics.trajectory(cont, train, seed=1, probes=probes)
    plain = cont(train, 1, "plain")                              # the same run, no probes
    assert [p["step"] for p in run["steps"]] == [0, 1, 2]        # 4 pairs, batch 2
    for k, r in at_theta.items():
        assert run["steps"][0][k]["loss"] == pytest.approx(r.mean_loss, abs=1e-6)
    # the last probe is the model the run ends with
    assert run["steps"][-1]["heldout"]["loss"] == pytest.approx(run["final"]["mean_loss"],
                                                                abs=1e-6)
    assert run["final"]["mean_loss"] == pytest.approx(plain.result.mean_loss, abs=1e-6)
    assert run["train_losses"] == pytest.approx(plain.train.losses, abs=1e-6)
    assert run["steps"][1]["heldout"]["loss"] != run["steps"][0]["heldout"]["loss"]
    cont.reset()
    assert cont.evaluate().mean_loss == pytest.approx(at_theta["heldout"].mean_loss, abs=1e-6)


def test_summary_and_table_of_a_hand_made_trajectory():
    def point(step, h, f, c):
        return {"step": step, "heldout": {"loss": h}, "flipped": {"loss": f},
                "clean": {"loss": c}}

    run = {"seed": 2, "steps": [point(0, 0.60, 0.80, 0.50), point(1, 0.55, 0.70, 0.45),
                                point(2, 0.65, 0.60, 0.40), point(3, 0.58, 0.50, 0.35)]}
    s = dynamics.summary(run)
    assert s == pytest.approx({"start": 0.60, "end": 0.58, "min": 0.55, "max": 0.65,
                               "largest_rise": 0.10})
    assert dynamics.summary(run, "flipped")["end"] == 0.50
    line = dynamics.markdown([run]).splitlines()[2]
    assert line == ("| 2 | 3 | 0.600 → 0.580 | 0.550 – 0.650 | +0.100 | 0.800 → 0.500 | "
                    "0.500 → 0.350 |")


def test_composition_correlates_flipped_pairs_in_a_batch_with_the_loss_change():
    def point(step, h):
        return {"step": step, "heldout": {"loss": h}}

    run = {"seed": 0, "steps": [point(0, 0.60), point(1, 0.70), point(2, 0.65), point(3, 0.80),
                                point(4, 0.70)],
           "batches": [["f1", "c1"], ["c2", "c3"], ["f2", "f3"], ["c4", "c5"]]}
    c = dynamics.composition(run, {"f1", "f2", "f3"})
    assert c["flipped_in_batch"] == [1, 0, 2, 0]
    assert c["loss_change"] == pytest.approx([0.10, -0.05, 0.15, -0.10])
    # hand: x − x̄ = [0.25, −0.75, 1.25, −0.75], y − ȳ = [0.075, −0.075, 0.125, −0.125]
    sxy = 0.25 * 0.075 + 0.75 * 0.075 + 1.25 * 0.125 + 0.75 * 0.125
    sxx, syy = 0.0625 + 0.5625 + 1.5625 + 0.5625, 2 * 0.075 ** 2 + 2 * 0.125 ** 2
    assert c["pearson"] == pytest.approx(sxy / (sxx * syy) ** 0.5)
    line = dynamics.markdown([run], flipped={"f1", "f2", "f3"}).splitlines()[2]
    assert line.endswith(f"| {c['pearson']:+.2f} | 2 of 2 |")
