"""``gradproj demo``: the paper's pipeline end to end on the embedded SmolLM2 and a generated task.

1. Generate train (a share of pairs flipped: known label noise), val and test pairs.
2. Warm up θ (1 epoch DPO on train), train θ_V (1 epoch on val from θ).
3. Score every training pair: IRM, LossDiff, and IF/TIF from a gradient store at θ.
4. For each rule (all, random, top-if, tif, lossdiff, irm, lossdiff-irm) at the same keep
   fraction: continue DPO from θ on its selection and measure held-out preference accuracy —
   all of 2–4 by ``gradproj ablate`` (gradproj.evaluation.ablate) into ``out/run``.

Sizes are small so that it runs in minutes on a 2-core CPU; the rigour (same θ, same keep, same
training budget per rule, held-out test pairs never seen) is the paper's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from gradproj.core.data import write_pairs_jsonl
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from gradproj.core.settings import Settings, at_least_one, fraction, positive, setting
from gradproj.evaluation.ablate import AblateSettings, run_ablation
from gradproj.evaluation.runner import HeldOut
from gradproj.demo.synthetic import make_task
from gradproj.pipeline.run import RunInputs
from gradproj.store.build import StoreSettings
from gradproj.training.evaluate import EvalResult
from gradproj.training.train import TrainSettings

RULES = ("all", "random", "top-if", "tif", "lossdiff", "irm", "lossdiff-irm")
MAX_LENGTH = 96


@dataclass(frozen=True)
class DemoSettings(Settings):
    model: str = setting("smollm2", "Model: the embedded SmolLM2, a folder or a hub id.")
    n_train: int = setting(32, "Training pairs.", check=at_least_one)
    n_test: int = setting(24, "Held-out test pairs.", check=at_least_one)
    flip: float = setting(0.25, "Share of training pairs flipped.",
                          check=(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    keep: float = setting(0.64, "Keep fraction of every rule.", check=fraction)
    epochs: float = setting(1.0, "Epochs of every training stage (warm-up, auxiliary, "
                                 "continued).", check=positive)
    lr: float = setting(2e-3, "Learning rate.", check=positive)
    seed: int = setting(0, "Task and training seed.")
    out: str = setting("runs/demo", "Folder for the demo's data, adapters and results.")
    device: str = setting("auto", "auto, cpu, cuda.")


def run_demo(s: DemoSettings, echo=print) -> dict:
    """Run the demo through ``gradproj ablate`` (one seed), print its table, and write
    ``out/results.json`` beside the ablation's files."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    task = make_task(n_train=s.n_train, n_val=max(8, s.n_train // 4), n_test=s.n_test,
                     flip=s.flip, seed=s.seed)
    for name in ("train", "val", "test"):
        write_pairs_jsonl(getattr(task, name), out / f"{name}.jsonl")
    (out / "flipped.json").write_text(json.dumps(sorted(task.flipped)))
    echo(f"task: {len(task.train)} train pairs ({len(task.flipped)} flipped), {len(task.val)} "
         f"val, {len(task.test)} test -> {out}")

    model = ModelSettings(model=s.model, device=s.device)
    loaded = load_model(model)
    pref = PreferenceSettings(max_length=MAX_LENGTH)
    before = HeldOut(loaded, task.test, pref).evaluate(loaded)
    clock = {"load + base eval": time.perf_counter() - start}
    inputs = RunInputs(model=model, train=str(out / "train.jsonl"), val=str(out / "val.jsonl"),
                       training=TrainSettings(epochs=s.epochs, lr=s.lr, batch_size=8,
                                              seed=s.seed),
                       store=StoreSettings(proj_dim=2048, batch_size=8), pref=pref)
    record = run_ablation(inputs, str(out / "test.jsonl"), out / "run",
                          AblateSettings(methods=RULES, keep=s.keep, seeds=1), force=True,
                          flipped=task.flipped, loaded=loaded)
    for row in record["runs"]:
        clock[f"continue on {row['rule']}"] = row["train_seconds"] + row["eval_seconds"]
    warm = EvalResult(**record["theta"])
    total = time.perf_counter() - start
    _print(echo, s, before, warm, record["runs"], clock, total)
    results = {"settings": s.to_dict(), "before": before.to_dict(), "warm_up": warm.to_dict(),
               "rules": record["runs"], "ablation": str(out / "run" / "ablation.md"),
               "seconds": clock, "total_seconds": total}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _print(echo, s: DemoSettings, before: EvalResult, warm: EvalResult, rows, clock, total):
    echo("")
    echo(f"held-out test pairs: preference accuracy (pref), reward accuracy (h > 0), DPO loss; "
         f"each rule keeps {s.keep:.0%} and continues DPO from θ for {s.epochs:g} epoch(s)")
    echo(f"{'model':24s} {'kept':>5s} {'flips rm':>8s} {'ovl TIF':>7s} {'pref':>6s} "
         f"{'reward':>6s} {'loss':>7s}")
    for label, r in (("base (adapter off)", before), ("warm-up θ", warm)):
        echo(f"{label:24s} {'':>5s} {'':>8s} {'':>7s} {r.policy_accuracy:6.3f} "
             f"{r.accuracy:6.3f} {r.mean_loss:7.4f}")
    for r in rows:
        echo(f"{'θ + ' + r['rule']:24s} {r['kept']:5d} {r['flips_removed']:8.0%} "
             f"{r['overlap_tif']:7.2f} {r['policy_accuracy']:6.3f} {r['accuracy']:6.3f} "
             f"{r['mean_loss']:7.4f}")
    echo("")
    echo("flips rm: share of the deliberately flipped training pairs the rule dropped; "
         "ovl TIF: overlap coefficient with the TIF selection.")
    echo("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in clock.items()) + f"; total {total:.0f}s")
