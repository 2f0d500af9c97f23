"""Which evidence sources can the model learn? Base vs warm-up θ on held-out pairs of each source
(benchmarks.harness.learnability): the generated task and each BIG-bench task, N training and
M test pairs a source, one epoch of DPO at the warm-up settings of bench_select (lr 2e-3,
batch 8), which the evidence runs use. Prints and writes the table (JSON, and docs/results.md
between its bench_learnability markers).

    .venv/bin/python -m benchmarks.bench_learnability                   # 23 candidates, ~40 min
    .venv/bin/python -m benchmarks.bench_learnability --quick           # 4 sources, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


from benchmarks import common as C  # noqa: E402

CANDIDATES = ("sports_understanding,navigate,implicatures,ruin_names,disambiguation_qa,"
              "anachronisms,emoji_movie,hyperbaton,snarks,causal_judgment,date_understanding,"
              "movie_recommendation,logical_fallacy_detection,epistemic_reasoning,"
              "formal_fallacies_syllogisms_negation,winowhy,presuppositions_as_nli,"
              "analytic_entailment,general_knowledge,social_iqa,odd_one_out,timedial,"
              "physical_intuition")
QUICK = "navigate,sports_understanding,epistemic_reasoning"
BEGIN, END = C.tables.bench_markers("bench_learnability")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=None, help=f"BIG-bench tasks (default: {CANDIDATES})")
    ap.add_argument("--n-train", type=int, default=96, help="training pairs a source")
    ap.add_argument("--n-test", type=int, default=48, help="held-out pairs a source")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3,
                    help="warm-up learning rate (bench_select's, which the evidence runs use)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of sources already in --json (same settings) and "
                         "measure only the others (a cut run goes on where it stopped)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK} and the generated task, "
                    "32 / 16 pairs, into runs/bench-quick/")
    ap.add_argument("--json", default=str(C.ROOT / "docs" / "benchmarks" / "bench_learnability.json"))
    ap.add_argument("--results-md", default=str(C.ROOT / "docs" / "results.md"))
    a = ap.parse_args(argv)
    if a.quick:      # sizes and output of the quick run, unless given
        given = set(argv if argv is not None else sys.argv[1:])
        a.tasks = a.tasks or QUICK
        a.n_train = a.n_train if "--n-train" in given else 32
        a.n_test = a.n_test if "--n-test" in given else 16
        if "--json" not in given:
            a.json = str(C.ROOT / "runs" / "bench-quick" / "bench_learnability.json")
    tasks = (a.tasks or CANDIDATES).split(",")

    from gradproj.core.objectives import PreferenceSettings
    from benchmarks.harness import learnability as L
    from benchmarks.harness.bigbench import bigbench_pairs
    from benchmarks.harness.tables import replace_between
    from gradproj.training.train import TrainSettings

    info = C.machine_info(("transformers", "peft", "trl"))
    C.log(C.machine_line(info))
    splits = bigbench_pairs(tasks=tasks, seed=a.seed, max_train=a.n_train * len(tasks),
                            max_test=a.n_test * len(tasks))
    sources = [L.synthetic_source(a.n_train, a.n_test, a.seed)] + L.split_by(
        {"train": splits["train"], "test": splits["test"]}, "task", min_pairs=8,
        prefix="bigbench:", max_train=a.n_train, max_test=a.n_test)
    pref = PreferenceSettings(max_length=a.max_length)
    training = TrainSettings(seed=a.seed, lr=a.lr, epochs=a.epochs)
    settings = {"n_train": a.n_train, "n_test": a.n_test, "max_length": a.max_length,
                "seed": a.seed, "training": training.to_dict(), "min_accuracy": L.MIN_ACCURACY,
                "max_loss": L.MAX_LOSS}
    head = (f"{C.machine_line(info)}; {a.n_train} training / {a.n_test} held-out pairs a "
            f"source (fewer where a task has fewer), max length {a.max_length}, "
            f"{training.epochs:g} epoch(s) (lr {training.lr}, batch {training.batch_size}).")
    done = {}
    if a.resume and Path(a.json).is_file():
        saved = json.loads(Path(a.json).read_text())
        if json.loads(json.dumps(settings)) == saved["settings"]:
            done = {r["source"]: r for r in saved["rows"]}
            C.log(f"resuming: {len(done)} sources kept from {a.json}")
        else:
            C.log(f"not resuming: {a.json} was written with other settings")
    rows = []
    with C.quiet(a.threads):
        loaded = C.load_smollm2()
        for src in sources:     # results written after every source: a cut run keeps them
            rows.append(done.get(src.name) or L.measure(loaded, src, training, pref,
                                                        "/tmp/gradproj-learnability"))
            C.log(L.markdown(rows[-1:]).splitlines()[-1])
            C.write_json(Path(a.json), {"machine": info, "settings": settings, "rows": rows})
            if not a.quick:
                replace_between(a.results_md, BEGIN, END, f"{head}\n\n{L.markdown(rows)}")
    print(f"\n{head}\n\n{L.markdown(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
