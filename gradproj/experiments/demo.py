"""``gradproj demo``: the paper's pipeline end to end on the embedded SmolLM2 and a generated task.

1. Generate train (a share of pairs flipped: known label noise), val and test pairs.
2. Warm up θ (1 epoch DPO on train), train θ_V (1 epoch on val from θ).
3. Score every training pair: IRM, LossDiff, and IF/TIF from a gradient store at θ.
4. For each rule (all, random, top-if, tif, lossdiff, irm, lossdiff-irm) at the same keep
   fraction: continue DPO from θ on its selection and measure held-out preference accuracy.

Sizes are small so that it runs in minutes on a 2-core CPU; the rigour (same θ, same keep, same
training budget per rule, held-out test pairs never seen) is the paper's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gradproj.store.build import StoreSettings
from gradproj.core.data import write_pairs_jsonl
from gradproj.core.logprobs import response_logprobs
from gradproj.training.evaluate import EvalResult, evaluate
from gradproj.core.model import ModelSettings, load_model, reattach
from gradproj.pipeline.run import Pipeline, RunInputs
from gradproj.attribution.selection import overlap_coefficient, select
from gradproj.experiments.synthetic import make_task
from gradproj.core.tokens import tokenize_pairs
from gradproj.training.train import TrainSettings, train_adapter

RULES = ("all", "random", "top-if", "tif", "lossdiff", "irm", "lossdiff-irm")
MAX_LENGTH = 96


@dataclass(frozen=True)
class DemoSettings:
    model: str = "smollm2"
    n_train: int = 32
    n_test: int = 24
    flip: float = 0.25
    keep: float = 0.64
    epochs: float = 1.0
    """Epochs of every training stage (warm-up, auxiliary, continued)."""
    lr: float = 2e-3
    seed: int = 0
    out: str = "runs/demo"
    device: str = "auto"


def run_demo(s: DemoSettings, echo=print) -> dict:
    """Run the demo, print its table, and write ``out/results.json``."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = {"start": time.perf_counter()}

    def lap(name):
        now = time.perf_counter()
        clock[name] = now - clock.pop("_last", clock["start"])
        clock["_last"] = now

    task = make_task(n_train=s.n_train, n_val=max(8, s.n_train // 4), n_test=s.n_test,
                     flip=s.flip, seed=s.seed)
    for name in ("train", "val", "test"):
        write_pairs_jsonl(getattr(task, name), out / f"{name}.jsonl")
    (out / "flipped.json").write_text(json.dumps(sorted(task.flipped)))
    echo(f"task: {len(task.train)} train pairs ({len(task.flipped)} flipped), {len(task.val)} "
         f"val, {len(task.test)} test -> {out}")

    loaded = load_model(ModelSettings(model=s.model, device=s.device))
    test_tok = tokenize_pairs(task.test, loaded.tokenizer, MAX_LENGTH).pairs
    ref = response_logprobs(loaded.model, test_tok, loaded.tokenizer.pad_token_id,
                            reference=True)
    before = evaluate(loaded, task.test, max_length=MAX_LENGTH, reference=ref)
    lap("load + base eval")

    training = TrainSettings(epochs=s.epochs, lr=s.lr, batch_size=8, seed=s.seed,
                             max_length=MAX_LENGTH)
    inputs = RunInputs(model=loaded.settings, train=str(out / "train.jsonl"),
                       val=str(out / "val.jsonl"), training=training,
                       store=StoreSettings(proj_dim=2048, max_length=MAX_LENGTH, batch_size=8))
    pipe = Pipeline(inputs, out / "select", force=True, progress=False, loaded=loaded)
    theta = pipe.theta()
    lap("warm-up θ")
    pipe.theta_v()
    lap("auxiliary θ_V")
    table = pipe.scores(need_if=True)
    lap("scores + store + IF")

    loaded = reattach(pipe.loaded, theta)
    warm = evaluate(loaded, task.test, max_length=MAX_LENGTH, reference=ref)
    by_id = {p.id: p for p in task.train}
    tif_kept = select(table, "tif", s.keep).kept
    rows = []
    for rule in RULES:
        sel = select(table, rule, s.keep, seed=s.seed)
        removed = len(task.flipped - set(sel.kept)) / max(1, len(task.flipped))
        loaded = reattach(loaded, theta)
        train_adapter(loaded, [by_id[i] for i in sel.kept], replace(training, seed=s.seed),
                      out / "continued" / rule, overwrite=True, progress=False)
        result = evaluate(loaded, task.test, max_length=MAX_LENGTH, reference=ref)
        rows.append({"rule": rule, "kept": len(sel.kept), "flips_removed": removed,
                     "overlap_tif": overlap_coefficient(sel.kept, tif_kept), **result.to_dict()})
        lap(f"continue on {rule}")
    total = time.perf_counter() - clock.pop("start")
    clock.pop("_last", None)
    _print(echo, s, before, warm, rows, clock, total)
    results = {"settings": asdict(s), "before": before.to_dict(), "warm_up": warm.to_dict(),
               "rules": rows, "seconds": clock, "total_seconds": total}
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
