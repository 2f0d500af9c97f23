"""Benchmark: selection rules on the embedded SmolLM2 with a generated task and flipped pairs.

The paper's pipeline (the same as ``gradproj demo``, larger and repeated over seeds):

1. Generate a task (gradproj.synthetic.make_task): train pairs with ``--flip`` of them swapped
   (known label noise), clean validation and clean held-out test pairs.
2. Warm up θ (``--warm-epochs`` of DPO on train from a fresh LoRA), train θ_V (``--aux-epochs``
   on val from θ).
3. Score every training pair: IRM and LossDiff (forward passes), a gradient store at θ, IF / TIF.
4. For each rule (all, random, top-if, tif, lossdiff, irm, lossdiff-irm) at the same keep
   fraction: continue DPO from θ on its selection for ``--cont-epochs`` and evaluate on the test
   pairs; repeated for every seed in ``--seeds``.

Design: one task, one θ, one θ_V and one score table (all seeded with ``--task-seed``); the seed
of a repetition changes only the continued training (shuffling of its pairs) and the pairs the
``random`` rule draws. So the std over seeds is training noise of the continued stage, not the
noise of the task, θ or the scores, and not the sampling noise of the finite test set (the same
test pairs are used throughout; its binomial standard error is reported separately).

Reported:

* per rule: pairs kept, share of the flipped pairs removed, flipped share left in the selection,
  overlap coefficient with the TIF selection, and on the held-out test pairs (mean ± std over
  seeds) the policy preference accuracy (log π(y_w) > log π(y_l)), the reward accuracy (h > 0)
  and the mean DPO loss; the same for the base model (adapter off — its reward accuracy is 0 by
  construction, h = 0), for θ and for θ_V;
* Pearson and Spearman correlations of LossDiff and IRM with IF (paper: 0.77 and 0.67), with a
  Fisher-z 95% interval on Pearson;
* AUROC of each score for telling clean from flipped pairs (P(score(clean) > score(flipped)));
* wall time of each stage: model load, warm-up θ, θ_V, scores (IRM + LossDiff), store build, IF,
  and every continued training (and its evaluation).

    .venv/bin/python benchmarks/bench_select.py            # full: 96 train / 24 val / 48 test, 3 seeds
    .venv/bin/python benchmarks/bench_select.py --quick    # 32 / 8 / 16, 1 seed (a few minutes)

Writes ``--json`` (default docs/bench_select.json) and ``--png`` (docs/bench_select.png);
artifacts (pairs, adapters, store) go to ``--work`` (default /tmp/gradproj-bench-select).
Timings on a shared 2-core machine are noisy; the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gradproj.pipeline.compare import _ranks  # noqa: E402  (after the path insert)

RULES = ("all", "random", "top-if", "tif", "lossdiff", "irm", "lossdiff-irm")
SCORES = ("lossdiff", "irm", "if")
PAPER = {"pearson_lossdiff_if": 0.77, "pearson_irm_if": 0.67,
         "overlap_lossdiff_irm_tif": (0.73, 0.78), "overlap_single_tif": (0.60, 0.70)}


# ------------------------------------------------------------------------------ statistics

def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (gradproj.compare's ranks are 0-based)."""
    return _ranks(np.asarray(x, float)) + 1


def pearson(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(rankdata(a[ok]), rankdata(b[ok]))


def fisher_ci(r: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95% interval of a Pearson correlation (Fisher z, normal data)."""
    if not math.isfinite(r) or n < 4 or abs(r) >= 1:
        return (float("nan"), float("nan"))
    m, s = math.atanh(r), 1 / math.sqrt(n - 3)
    return (math.tanh(m - z * s), math.tanh(m + z * s))


def auroc(scores, positive) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie), by ranks (Mann–Whitney U)."""
    s = np.asarray(scores, float)
    pos = np.asarray(positive, bool)
    ok = np.isfinite(s)
    s, pos = s[ok], pos[ok]
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def mean_std(xs) -> tuple[float, float]:
    """Mean and sample std (ddof=1; 0 for one value or when every value is the same)."""
    xs = np.asarray(xs, float)
    if len(xs) < 2 or np.ptp(xs) == 0:
        return float(xs.mean()), 0.0
    return float(xs.mean()), float(xs.std(ddof=1))


# ------------------------------------------------------------------------------ machine

def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    import torch
    import transformers
    import trl
    import peft

    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_gib, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__,
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "gradproj_dirty": bool(git("status", "--porcelain", "--", "gradproj")),
            "loadavg_start": list(os.getloadavg())}


# ------------------------------------------------------------------------------ run

@dataclass
class Task:
    """Train pairs (``flipped`` of them with chosen and rejected swapped), a clean validation set,
    a second clean validation set (the "new query" of the cost comparison) and clean test pairs."""
    train: list
    val: list
    val2: list
    test: list
    flipped: frozenset
    source: str


def load_task(args, flip: float) -> Task:
    """The generated task (``--data synthetic``) or BIG-bench pairs (``--data bigbench``), with
    ``flip`` of the training pairs swapped (seeded by ``--task-seed``)."""
    from gradproj.core.data import pairs_from_records
    from gradproj.experiments.synthetic import flip_records, make_records

    seed = args.task_seed
    if args.data == "synthetic":
        train = make_records(args.n_train, seed, "train")
        val = make_records(args.n_val, seed + 2, "val")
        val2 = make_records(args.n_val, seed + 4, "val2")
        test = make_records(args.n_test, seed + 3, "test")
        source = "gradproj.synthetic (arithmetic, comparison, counting, parity)"
    else:
        from bigbench_pairs import bigbench_pairs
        splits = bigbench_pairs(seed=seed, max_train=args.n_train, max_val=2 * args.n_val,
                                max_test=args.n_test, cache_dir=args.bigbench_cache)
        train, test = splits["train"], splits["test"]
        val, val2 = splits["val"][0::2], splits["val"][1::2]
        source = "BIG-bench 1.0.0 multiple-choice tasks (benchmarks/bigbench_pairs.py)"
        if min(len(train), len(val), len(val2), len(test)) == 0:
            raise SystemExit("bench_select: BIG-bench gave an empty split")
    train, flipped = flip_records(train, flip, seed + 1)
    return Task(*(pairs_from_records(r, origin=f"<{args.data} {name}>") for name, r in
                  (("train", train), ("val", val), ("val2", val2), ("test", test))),
                frozenset(flipped), source)


def task_names(ids) -> np.ndarray:
    """The source task of each pair id: the prefix before its last "-" (BIG-bench ids are
    "<task>-<row>")."""
    return np.array([i.rsplit("-", 1)[0] for i in ids])


def per_task_auroc(ids, cols: dict, is_flip: np.ndarray) -> dict:
    """AUROC clean > flipped of every score within each source task (:func:`task_names`), for
    tasks with both clean and flipped pairs."""
    tasks = task_names(ids)
    out = {}
    scored = np.isfinite(cols["if"])
    for name in sorted(set(tasks)):
        m = (tasks == name) & scored
        if 0 < int(is_flip[m].sum()) < int(m.sum()):
            out[str(name)] = {"n": int(m.sum()), "n_flipped": int(is_flip[m].sum()),
                         **{c: auroc(cols[c][m], ~is_flip[m]) for c in SCORES}}
    return out


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def score_stage(args, loaded, task: Task, work: Path, stages: dict, label: str) -> dict:
    """θ, θ_V, IRM + LossDiff, the store and IF for one task; score statistics and every rule's
    selection. Stage times go into ``stages`` (prefixed by ``label`` unless it is empty)."""
    from gradproj.store.build import StoreSettings, build_store
    from gradproj.core.data import write_pairs_jsonl
    from gradproj.core.model import reattach
    from gradproj.pipeline.run import Pipeline, RunInputs
    from gradproj.attribution.selection import overlap_coefficient, select
    from gradproj.training.train import TrainSettings, train_adapter

    work.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        write_pairs_jsonl(getattr(task, name), work / f"{name}.jsonl")

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        stages[f"{label}{name}"] = time.perf_counter() - t
        say(f"{label}{name}: {stages[f'{label}{name}']:.0f}s")
        return out

    training = TrainSettings(epochs=args.warm_epochs, lr=args.lr, batch_size=args.batch,
                             seed=args.task_seed, max_length=args.max_length)
    store_settings = StoreSettings(proj_dim=args.proj_dim, max_length=args.max_length,
                                   batch_size=args.batch)
    inputs = RunInputs(model=loaded.settings, train=str(work / "train.jsonl"),
                       val=str(work / "val.jsonl"), training=training, store=store_settings)
    pipe = Pipeline(inputs, work / "select", force=True, progress=False, loaded=loaded)
    theta = timed("warm-up θ", pipe.theta)

    def aux():
        if args.aux_epochs == args.warm_epochs:
            return pipe.theta_v()
        # θ_V's epochs differ from θ's: train it here; the pipeline reuses it as aux_adapter
        aux_dir = work / "theta_v_aux"
        m = reattach(pipe.loaded, theta)
        train_adapter(m, task.val, replace(training, epochs=args.aux_epochs), aux_dir,
                      overwrite=True, progress=False)
        m.settings = replace(m.settings, adapter=str(aux_dir))   # its weights are θ_V now
        pipe.loaded = m
        pipe.inputs = replace(pipe.inputs, aux_adapter=str(aux_dir))
        return str(aux_dir)

    theta_v = timed("auxiliary θ_V", aux)
    timed("scores (IRM + LossDiff)", lambda: pipe.scores(need_if=False))
    # The store as Pipeline.influence builds it (same settings), timed on its own; the pipeline
    # then finds it complete and only computes IF.
    s = replace(inputs.store, beta=training.beta, max_length=training.max_length)
    timed("store build", lambda: build_store(pipe._model(theta), pipe.train, s,
                                             pipe.out / "store", progress=False))
    table = timed("IF (val gradients + query)", lambda: pipe.scores(need_if=True))
    assert "store" not in pipe.stages, "the pipeline rebuilt the store"

    ids = table.ids
    flipped = set(task.flipped)
    is_flip = np.array([i in flipped for i in ids])
    cols = {c: np.asarray(table[c], float) for c in SCORES}
    n = int(np.isfinite(cols["if"]).sum())
    corr = {}
    for c in ("lossdiff", "irm"):
        r = pearson(cols[c], cols["if"])
        corr[c] = {"pearson_if": r, "pearson_if_ci95": fisher_ci(r, n),
                   "spearman_if": spearman(cols[c], cols["if"])}
    corr["lossdiff_irm"] = {"pearson": pearson(cols["lossdiff"], cols["irm"]),
                            "spearman": spearman(cols["lossdiff"], cols["irm"])}
    aurocs = {c: auroc(cols[c], ~is_flip) for c in SCORES}
    per_task = per_task_auroc(ids, cols, is_flip)

    tif_kept = select(table, "tif", args.keep).kept
    selections = {}
    for seed in args.seeds:
        for rule in RULES:
            if rule != "random" and rule in selections:
                continue
            sel = select(table, rule, args.keep, seed=seed)
            selections[rule if rule != "random" else ("random", seed)] = sel

    def sel_stats(sel):
        kept = set(sel.kept)
        return {"kept": len(kept),
                "flips_removed": len(flipped - kept) / max(1, len(flipped)),
                "flipped_in_kept": len(flipped & kept) / max(1, len(kept)),
                "overlap_tif": overlap_coefficient(sel.kept, tif_kept),
                # the keep decision as a binary score: AUROC = (TPR + TNR) / 2 for clean pairs
                "keep_auroc": auroc([i in kept for i in ids], ~is_flip),
                "bands": {k: list(v) for k, v in sel.bands.items()},
                "drop_reasons": sel.reason_counts()}

    say(f"{label}Pearson with IF: lossdiff {corr['lossdiff']['pearson_if']:.3f}, irm "
        f"{corr['irm']['pearson_if']:.3f}; AUROC clean>flipped: "
        + ", ".join(f"{k} {v:.3f}" for k, v in aurocs.items()))
    return {"pipe": pipe, "theta": theta, "theta_v": theta_v, "table": table,
            "training": training, "store_settings": store_settings, "is_flip": is_flip,
            "cols": cols, "correlations": corr, "auroc_clean_vs_flipped": aurocs,
            "per_task": per_task,
            "selections": selections, "sel_stats": sel_stats,
            "selection_summary": {rule: sel_stats(selections[
                rule if rule != "random" else ("random", args.seeds[0])]) for rule in RULES}}


def second_query_cost(args, loaded, stage: dict, task: Task, work: Path) -> dict:
    """Cost of answering a second, new validation set (val2) once θ exists: from the store
    (val2 gradients + lookup) vs LossDiff (a new θ_V from θ on val2 + forward passes over every
    training pair) vs IF without a store (the store build + the store answer)."""
    from gradproj.attribution.influence import InfluenceSettings, compute_influence
    from gradproj.core.model import reattach
    from gradproj.attribution.scores import score_pairs
    from gradproj.store.shards import Store
    from gradproj.training.train import train_adapter

    theta, training = stage["theta"], stage["training"]
    model = reattach(loaded, theta)
    store = Store(stage["pipe"].out / "store")
    t = time.perf_counter()
    inf = compute_influence([store], task.val2, InfluenceSettings(top_k=0), loaded=[model])
    store_s = time.perf_counter() - t
    t = time.perf_counter()
    aux2 = work / "theta_v2"
    train_adapter(model, task.val2, replace(training, epochs=args.aux_epochs), aux2,
                  overwrite=True, progress=False)
    aux_s = time.perf_counter() - t
    model = reattach(model, theta)
    t = time.perf_counter()
    table = score_pairs(model, stage["pipe"].train, str(aux2), beta=training.beta,
                        max_length=training.max_length, batch_size=training.batch_size)
    fwd_s = time.perf_counter() - t
    build_s = stage["stages"]["store build"]
    agree = spearman(inf.scores, table["lossdiff"])
    out = {"n_train": len(stage["pipe"].train), "n_val2": len(task.val2),
           "store_answer_s": store_s, "store_answer_split_s": inf.seconds,
           "lossdiff_answer_s": aux_s + fwd_s, "lossdiff_aux_training_s": aux_s,
           "lossdiff_forward_s": fwd_s, "if_without_store_s": build_s + store_s,
           "ratio_lossdiff_to_store": (aux_s + fwd_s) / store_s,
           "ratio_if_without_store_to_lossdiff": (build_s + store_s) / (aux_s + fwd_s),
           "ratio_if_without_store_to_store": (build_s + store_s) / store_s,
           "spearman_if_val2_lossdiff_val2": agree}
    say("second query: store {:.1f}s, LossDiff {:.1f}s (θ_V {:.1f} + forward {:.1f}), IF "
        "without a store {:.1f}s".format(store_s, aux_s + fwd_s, aux_s, fwd_s, build_s + store_s))
    return out


def score_table(ids, cols: dict, is_flip: np.ndarray) -> dict:
    """Per-pair scores as JSON columns (non-finite → null)."""
    return {"ids": list(ids), "flipped": is_flip.tolist(),
            **{c: [None if not math.isfinite(v) else float(v) for v in cols[c]]
               for c in SCORES}}


def run(args) -> dict:
    import torch  # noqa: F401  (import cost outside the timed stages)
    from gradproj.core.logprobs import response_logprobs
    from gradproj.training.evaluate import evaluate
    from gradproj.core.model import ModelSettings, load_model, reattach
    from gradproj.core.tokens import tokenize_pairs
    from gradproj.training.train import train_adapter

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t_all = time.perf_counter()
    stages: dict[str, float] = {}
    info = machine_info()
    say(f"machine: {info['nproc']} cpu ({info['cpu']}), {info['ram_gib']} GiB, "
        f"load {info['loadavg_start'][0]:.1f}, commit {info['commit']}, device {args.device}")

    task = load_task(args, args.flip)
    flipped = set(task.flipped)
    say(f"task ({args.data}): {len(task.train)} train ({len(flipped)} flipped), "
        f"{len(task.val)} val, {len(task.val2)} second val, {len(task.test)} test")

    t = time.perf_counter()
    loaded = load_model(ModelSettings(model="smollm2", device=args.device))
    stages["model load"] = time.perf_counter() - t
    say(f"model loaded in {stages['model load']:.1f}s on {loaded.device}")

    def ev(model, ref):
        t = time.perf_counter()
        r = evaluate(model, task.test, max_length=args.max_length, batch_size=args.batch,
                     reference=ref).to_dict()
        return r, time.perf_counter() - t

    t = time.perf_counter()
    test_tok = tokenize_pairs(task.test, loaded.tokenizer, args.max_length)
    n_trunc = {"test": test_tok.n_truncated}
    ref = response_logprobs(loaded.model, test_tok.pairs, loaded.tokenizer.pad_token_id,
                            args.batch, reference=True)
    base, _ = ev(loaded, ref)
    stages["test reference log-probs + base eval"] = time.perf_counter() - t
    for name in ("train", "val"):
        n_trunc[name] = tokenize_pairs(getattr(task, name), loaded.tokenizer,
                                       args.max_length).n_truncated
    say(f"base: policy acc {base['policy_accuracy']:.3f}, loss {base['mean_loss']:.4f}")

    # ---- label-noise detection at every --noise rate (each: its own θ, θ_V, store, scores)
    noise = {}
    main_stage = None
    for rate in sorted(set(args.noise) | {args.flip}):
        t_task = task if rate == args.flip else load_task(args, rate)
        label = "" if rate == args.flip else f"[flip {rate:.0%}] "
        st_stages = stages if rate == args.flip else {}
        stage = score_stage(args, loaded, t_task, work / f"flip-{rate:.2f}", st_stages, label)
        stage["stages"] = {k.removeprefix(label): v for k, v in st_stages.items()}
        noise[f"{rate:.2f}"] = {
            "flip": rate, "n_flipped": len(t_task.flipped),
            "auroc_clean_vs_flipped": stage["auroc_clean_vs_flipped"],
            "correlations": stage["correlations"], "per_task_auroc": stage["per_task"],
            "score_table": score_table(stage["table"].ids, stage["cols"], stage["is_flip"]),
            "rules": {rule: {k: v for k, v in r.items() if k in
                             ("kept", "flips_removed", "flipped_in_kept", "keep_auroc")}
                      for rule, r in stage["selection_summary"].items()},
            "stages_seconds": stage["stages"]}
        if rate == args.flip:
            main_stage = stage
        else:
            shutil.rmtree(work / f"flip-{rate:.2f}", ignore_errors=True)
    stage = main_stage
    pipe, theta, theta_v, table = stage["pipe"], stage["theta"], stage["theta_v"], stage["table"]
    training, is_flip, cols = stage["training"], stage["is_flip"], stage["cols"]

    cost = None
    if args.cost:
        cost = second_query_cost(args, loaded, stage, task, work)

    loaded = reattach(pipe.loaded, theta)
    warm, _ = ev(loaded, ref)
    loaded = reattach(loaded, theta_v)
    aux, _ = ev(loaded, ref)
    say(f"θ: policy acc {warm['policy_accuracy']:.3f}; θ_V: {aux['policy_accuracy']:.3f}")

    ids = table.ids
    selections, sel_stats = stage["selections"], stage["sel_stats"]
    p = warm["policy_accuracy"]
    res = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                     if k not in ("json", "png", "work", "replot")},
        "training": asdict(training), "store": asdict(stage["store_settings"]),
        "design": "one task, one θ, one θ_V and one score table (task seed "
                  f"{args.task_seed}); seeds {list(args.seeds)} change only the continued "
                  "training's shuffling and the random rule's draw",
        "data": task.source,
        "machine": info, "n_truncated": n_trunc,
        "task": {"n_train": len(task.train), "n_flipped": len(flipped), "n_val": len(task.val),
                 "n_val2": len(task.val2), "n_test": len(task.test)},
        "test_se_at_theta": math.sqrt(p * (1 - p) / len(task.test)),
        "base": base, "theta": warm, "theta_v": aux,
        "train_losses": {name: json.loads((Path(path) / "train.json").read_text())["losses"]
                         for name, path in (("theta", theta), ("theta_v", theta_v))},
        "score_means": {c: {"clean": float(np.nanmean(cols[c][~is_flip])),
                            "flipped": float(np.nanmean(cols[c][is_flip]))
                            if is_flip.any() else None,
                            "std": float(np.nanstd(cols[c]))} for c in SCORES},
        "correlations": stage["correlations"],
        "auroc_clean_vs_flipped": stage["auroc_clean_vs_flipped"], "paper": PAPER,
        "noise": noise, "cost": cost,
        "score_table": score_table(ids, cols, is_flip),
    }
    partial_path = work / "partial.json"     # results so far (survives a crash or a kill)

    def save_partial():
        finish(res, runs, stages, t_all, partial=True)
        partial_path.write_text(json.dumps(res, indent=2, ensure_ascii=False))

    by_id = {p.id: p for p in task.train}
    runs = []
    save_partial()
    res["selections"] = stage["selection_summary"]
    for seed in args.seeds:
        for rule in args.rules:
            sel = selections[("random", seed) if rule == "random" else rule]
            loaded = reattach(loaded, theta)
            t = time.perf_counter()
            tr = train_adapter(loaded, [by_id[i] for i in sel.kept],
                               replace(training, epochs=args.cont_epochs, seed=seed),
                               work / "continued" / f"{rule}-s{seed}", overwrite=True,
                               progress=False)
            t_train = time.perf_counter() - t
            result, t_eval = ev(loaded, ref)
            row = {"rule": rule, "seed": seed, **sel_stats(sel), **result, "steps": tr.steps,
                   "final_train_loss": tr.losses[-1] if tr.losses else None,
                   "train_seconds": t_train, "eval_seconds": t_eval}
            runs.append(row)
            say(f"seed {seed} {rule:13s} kept {row['kept']:3d} flips rm "
                f"{row['flips_removed']:.0%}  pref {result['policy_accuracy']:.3f} reward "
                f"{result['accuracy']:.3f} loss {result['mean_loss']:.4f}  "
                f"({t_train:.0f}s train, {t_eval:.0f}s eval)")
            shutil.rmtree(work / "continued" / f"{rule}-s{seed}", ignore_errors=True)
            save_partial()

    return finish(res, runs, stages, t_all)


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and std (ddof=1) over seeds of every rule's numbers."""
    rules = []
    for rule in RULES:
        rs = [r for r in runs if r["rule"] == rule]
        if not rs:
            continue
        agg = {"rule": rule, "n_seeds": len(rs)}
        for k in ("kept", "flips_removed", "flipped_in_kept", "overlap_tif", "policy_accuracy",
                  "accuracy", "mean_loss", "mean_margin", "train_seconds", "eval_seconds"):
            agg[k], agg[k + "_std"] = mean_std([r[k] for r in rs])
        rules.append(agg)
    return rules


def finish(res: dict, runs: list[dict], stages: dict, t_all: float, partial: bool = False):
    res["runs"] = runs
    res["rules"] = aggregate(runs)
    res["stages_seconds"] = dict(stages)
    res["stages_seconds"]["continued training (all rules, all seeds)"] = sum(
        r["train_seconds"] for r in runs)
    res["stages_seconds"]["evaluation after continued training"] = sum(
        r["eval_seconds"] for r in runs)
    res["total_seconds"] = time.perf_counter() - t_all
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["partial"] = partial
    return res


# ------------------------------------------------------------------------------ output

def fmt(m, s, pct=False):
    if pct:
        return f"{m:.0%} ± {s:.0%}" if s else f"{m:.0%}"
    return f"{m:.3f} ± {s:.3f}"


def table_lines(res: dict) -> list[str]:
    n_seeds = len(res["settings"]["seeds"])
    lines = []
    lines.append("| model | kept | flips removed | flipped in kept | overlap w/ TIF | "
                 "policy acc | reward acc | DPO loss | train s |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in (("base (adapter off)", res["base"]), ("warm-up θ", res["theta"]),
                     ("θ_V (θ + val)", res["theta_v"])):
        lines.append(f"| {label} | | | | | {r['policy_accuracy']:.3f} | {r['accuracy']:.3f} | "
                     f"{r['mean_loss']:.4f} | |")
    for r in res["rules"]:
        lines.append(
            f"| θ + {r['rule']} | {r['kept']:.0f} | {fmt(r['flips_removed'], r['flips_removed_std'], True)} | "
            f"{fmt(r['flipped_in_kept'], r['flipped_in_kept_std'], True)} | "
            f"{r['overlap_tif']:.2f}" + (f" ± {r['overlap_tif_std']:.2f}" if r['overlap_tif_std'] else "")
            + f" | {fmt(r['policy_accuracy'], r['policy_accuracy_std'])} | "
            f"{fmt(r['accuracy'], r['accuracy_std'])} | "
            f"{r['mean_loss']:.4f} ± {r['mean_loss_std']:.4f} | {r['train_seconds']:.0f} |")
    lines.append("")
    lines.append(f"(mean ± std over {n_seeds} continued-training seed(s); std uses ddof=1)")
    return lines


def score_lines(res: dict) -> list[str]:
    c, a = res["correlations"], res["auroc_clean_vs_flipped"]
    lines = ["| score | Pearson with IF (95% CI) | Spearman with IF | paper Pearson | "
             "AUROC clean > flipped |", "|---|---:|---:|---:|---:|"]
    for s, paper in (("lossdiff", PAPER["pearson_lossdiff_if"]),
                     ("irm", PAPER["pearson_irm_if"])):
        lo, hi = c[s]["pearson_if_ci95"]
        lines.append(f"| {s} | {c[s]['pearson_if']:.3f} ({lo:.2f}–{hi:.2f}) | "
                     f"{c[s]['spearman_if']:.3f} | {paper:.2f} | {a[s]:.3f} |")
    lines.append(f"| if | 1 | 1 | | {a['if']:.3f} |")
    lines.append("")
    lines.append(f"Pearson(LossDiff, IRM) = {c['lossdiff_irm']['pearson']:.3f}, Spearman "
                 f"{c['lossdiff_irm']['spearman']:.3f}")
    return lines


def noise_lines(res: dict) -> list[str]:
    """Label-noise detection: AUROC of each score and of each rule's keep decision for telling
    clean from flipped pairs, and the share of flips each rule removes, per noise rate."""
    noise = res.get("noise") or {}
    if not noise:
        return []
    rules = [r for r in RULES if r != "all"]
    lines = ["| flip rate | flipped | AUROC IF | AUROC LossDiff | AUROC IRM | "
             + " | ".join(f"{r}: removed (keep AUROC)" for r in rules) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(rules)]
    for key in sorted(noise):
        n = noise[key]
        a = n["auroc_clean_vs_flipped"]
        cells = [f"{n['rules'][r]['flips_removed']:.0%} ({n['rules'][r]['keep_auroc']:.2f})"
                 for r in rules]
        lines.append(f"| {n['flip']:.0%} | {n['n_flipped']} | {a['if']:.3f} | "
                     f"{a['lossdiff']:.3f} | {a['irm']:.3f} | " + " | ".join(cells) + " |")
    tasks = sorted({t for key in noise for t in noise[key].get("per_task_auroc") or {}})
    if len(tasks) > 1:          # one "task" (the generated data) repeats the row above
        keys = sorted(noise)
        lines += ["", "AUROC clean > flipped within each source task (IF / LossDiff / IRM; "
                  "n flipped of n):", "",
                  "| task | " + " | ".join(f"{noise[k]['flip']:.0%} flipped" for k in keys)
                  + " |", "|---|" + "---|" * len(keys)]
        for t in tasks:
            cells = []
            for k in keys:
                a = (noise[k].get("per_task_auroc") or {}).get(t)
                cells.append(f"{a['if']:.2f} / {a['lossdiff']:.2f} / {a['irm']:.2f} "
                             f"({a['n_flipped']}/{a['n']})" if a else "")
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("AUROC = P(score of a clean pair > score of a flipped pair); a keep decision's "
                 "AUROC is (TPR + TNR)/2 of keeping clean pairs. The random rule is its first "
                 f"seed's draw. Chance: AUROC 0.5, flips removed 1 − keep = "
                 f"{1 - res['settings']['keep']:.0%}.")
    return lines


def cost_lines(res: dict) -> list[str]:
    c = res.get("cost")
    if not c:
        return []
    return [
        f"Answering a second validation set ({c['n_val2']} pairs) for {c['n_train']} training "
        "pairs, once θ exists:", "",
        "| method | seconds | ratio to the store |", "|---|---:|---:|",
        f"| store: val gradients + lookup | {c['store_answer_s']:.1f} | 1× |",
        f"| LossDiff: new θ_V ({c['lossdiff_aux_training_s']:.1f}s) + forward passes "
        f"({c['lossdiff_forward_s']:.1f}s) | {c['lossdiff_answer_s']:.1f} | "
        f"{c['ratio_lossdiff_to_store']:.1f}× |",
        f"| IF without a store: build + answer | {c['if_without_store_s']:.1f} | "
        f"{c['ratio_if_without_store_to_store']:.1f}× |", "",
        f"IF without a store / LossDiff = {c['ratio_if_without_store_to_lossdiff']:.1f}× "
        "(the paper: IF ≈ 120× slower than LossDiff-IRM). Spearman between the second set's IF "
        f"and its LossDiff: {c['spearman_if_val2_lossdiff_val2']:.3f}."]


def selection_lines(res: dict) -> list[str]:
    """Every rule's selection (the random rule's for the first seed), trained on or not."""
    keep = res["settings"]["keep"]
    lines = ["| rule | kept | flips removed | overlap w/ TIF | bands (quantiles) |",
             "|---|---:|---:|---:|---|"]
    for rule, r in res.get("selections", {}).items():
        bands = ", ".join(f"{k} ({a:.3f}, {b:.3f})" for k, (a, b) in r["bands"].items())
        lines.append(f"| {rule} | {r['kept']} | {r['flips_removed']:.0%} | "
                     f"{r['overlap_tif']:.2f} | {bands} |")
    lines.append("")
    lines.append(f"chance: a random selection removes 1 − keep = {1 - keep:.0%} of the flips and "
                 f"overlaps an equal-sized selection by keep = {keep:.2f} in expectation")
    return lines


def stage_lines(res: dict) -> list[str]:
    lines = ["| stage | seconds |", "|---|---:|"]
    for k, v in res["stages_seconds"].items():
        lines.append(f"| {k} | {v:.1f} |")
    for r in res["rules"]:
        lines.append(f"| continued training on {r['rule']} ({r['kept']:.0f} pairs), per seed | "
                     f"{r['train_seconds']:.1f} ± {r['train_seconds_std']:.1f} |")
    lines.append(f"| total | {res['total_seconds']:.0f} |")
    return lines


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rules = res["rules"]
    names = [r["rule"] for r in rules]
    x = np.arange(len(names))
    noise = res.get("noise") or {}
    fig, axes = plt.subplots(1, 3 if noise else 2, figsize=(19 if noise else 13, 4.6))
    ax1, ax2 = axes[0], axes[1]
    if noise:
        ax3, keys = axes[2], sorted(noise)
        xs, w3 = np.arange(len(SCORES)), 0.8 / len(keys)
        for j, key in enumerate(keys):
            vals = [noise[key]["auroc_clean_vs_flipped"][c] for c in SCORES]
            ax3.bar(xs + (j - (len(keys) - 1) / 2) * w3, vals, w3,
                    label=f"{noise[key]['flip']:.0%} flipped")
        ax3.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        ax3.set_xticks(xs, [{"if": "IF", "lossdiff": "LossDiff", "irm": "IRM"}[c]
                            for c in SCORES])
        ax3.set_ylim(0, 1.05)
        ax3.set_title("AUROC of each score, clean vs flipped training pairs", fontsize=10)
        ax3.legend(fontsize=8)
    w = 0.38
    ax1.bar(x - w / 2, [r["policy_accuracy"] for r in rules], w,
            yerr=[r["policy_accuracy_std"] for r in rules], capsize=3,
            label="policy acc (log π(y_w) > log π(y_l))", color="#4C72B0")
    ax1.bar(x + w / 2, [r["accuracy"] for r in rules], w,
            yerr=[r["accuracy_std"] for r in rules], capsize=3, label="reward acc (h > 0)",
            color="#DD8452")
    ax1.axhline(res["theta"]["policy_accuracy"], color="#4C72B0", ls="--", lw=1,
                label="θ policy acc")
    ax1.axhline(res["theta"]["accuracy"], color="#DD8452", ls="--", lw=1, label="θ reward acc")
    ax1.axhline(res["base"]["policy_accuracy"], color="grey", ls=":", lw=1,
                label="base policy acc")
    ax1.set_xticks(x, names, rotation=20)
    ax1.set_ylim(0, 1.18)
    n_seeds = len(res["settings"]["seeds"])
    ax1.set_title(f"held-out accuracy after continued DPO from θ "
                  f"({res['task']['n_test']} test pairs, {n_seeds} seed(s), ±std)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper center", ncol=3)
    ax2.bar(x, [r["flips_removed"] for r in rules],
            yerr=[r["flips_removed_std"] for r in rules], capsize=3, color="#55A868")
    ax2.axhline(1 - res["settings"]["keep"], color="grey", ls=":", lw=1,
                label=f"chance (1 − keep = {1 - res['settings']['keep']:.2f})")
    for i, r in enumerate(rules):
        ax2.text(i, r["flips_removed"] + 0.02, f"{r['flips_removed']:.0%}", ha="center",
                 fontsize=8)
    ax2.set_xticks(x, names, rotation=20)
    ax2.set_ylim(0, 1.1)
    ax2.set_title(f"share of the {res['task']['n_flipped']} flipped training pairs removed "
                  f"(keep {res['settings']['keep']:.2f})", fontsize=10)
    ax2.legend(fontsize=8)
    m = res["machine"]
    fig.suptitle(f"bench_select: SmolLM2-135M, {res.get('settings', {}).get('data', 'synthetic')}"
                 f" data, {res['task']['n_train']} train pairs, "
                 f"commit {m['commit']}, {m['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="32 train / 8 val / 16 test pairs, 1 seed, proj dim 1024")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--data", choices=("synthetic", "bigbench"), default="synthetic",
                    help="generated task, or BIG-bench multiple-choice pairs "
                         "(benchmarks/bigbench_pairs.py; downloads the 358 MB archive once)")
    ap.add_argument("--bigbench-cache", default=None,
                    help="cache folder of bigbench_pairs (default $GRADPROJ_CACHE or "
                         "~/.cache/gradproj)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--flip", type=float, default=0.25,
                    help="label-noise rate of the main run (downstream rules, cost)")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.10, 0.25, 0.40],
                    help="label-noise rates for the detection table (each its own θ, θ_V, "
                         "store and scores)")
    ap.add_argument("--no-cost", dest="cost", action="store_false",
                    help="skip answering the second validation set (store vs LossDiff)")
    ap.add_argument("--keep", type=float, default=0.64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--task-seed", type=int, default=0,
                    help="seed of the task, the warm-up θ and θ_V (fixed across --seeds)")
    ap.add_argument("--warm-epochs", type=float, default=1.0)
    ap.add_argument("--aux-epochs", type=float, default=1.0)
    ap.add_argument("--cont-epochs", type=float, default=1.0,
                    help="epochs of continued training per rule (the paper uses 2)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--proj-dim", type=int, default=2048)
    ap.add_argument("--rules", nargs="*", default=list(RULES), choices=RULES,
                    help="rules to continue training on (none: scores, correlations and "
                         "selections only)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, oversubscribed 2-core "
                         "machine one thread was 2-4x faster than two)")
    ap.add_argument("--replot", metavar="JSON",
                    help="only re-render the table and PNG from a results JSON")
    ap.add_argument("--work", default="/tmp/gradproj-bench-select")
    ap.add_argument("--json", default=str(ROOT / "docs" / "bench_select.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "bench_select.png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test = 32, 8, 16
        args.seeds, args.proj_dim = [0], 1024
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.seeds = tuple(args.seeds)

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    for name in ("transformers", "trl", "peft", "datasets", "gradproj"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        import datasets
        datasets.disable_progress_bars()
    except Exception:
        pass

    if args.replot:
        res = json.loads(Path(args.replot).read_text())
        res["rules"] = aggregate(res.get("runs", []))
        if "selections" not in res:       # older files: from the first seed's runs
            keys = ("kept", "flips_removed", "flipped_in_kept", "overlap_tif", "bands",
                    "drop_reasons")
            first = res["settings"]["seeds"][0]
            res["selections"] = {r["rule"]: {k: r[k] for k in keys} for r in res["runs"]
                                 if r["seed"] == first}
        res["reaggregated"] = "rules and selections recomputed from the same runs by --replot"
        if Path(args.replot).resolve() != Path(args.json).resolve():
            Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        import torch
        torch.set_num_threads(args.threads)
        res = run(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    print()
    lines = (score_lines(res) + [""] + noise_lines(res) + [""] + selection_lines(res) + [""]
             + cost_lines(res) + [""] + stage_lines(res))
    if res["rules"]:
        plot(res, Path(args.png))
        lines = table_lines(res) + [""] + lines
    for line in lines:
        print(line)
    print(f"\nwrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
