"""Why is `all` the most erratic rule? One more epoch from θ on every training pair (flipped
ones included), for several data-order seeds, with the held-out loss and the loss on the flipped
and the clean training pairs after every step (benchmarks.harness.dynamics). θ is one epoch of
DPO on the same training pairs, as in bench_select. Writes JSON, a PNG, and the table into
docs/results.md between its bench_dynamics markers.

    .venv/bin/python -m benchmarks.bench_dynamics                     # generated task, ~10 min
    .venv/bin/python -m benchmarks.bench_dynamics --data bigbench --bigbench-tasks navigate
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from benchmarks import common as C  # noqa: E402

BEGIN, END = C.tables.bench_markers("bench_dynamics")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("synthetic", "bigbench"), default="synthetic")
    ap.add_argument("--bigbench-tasks", default=None, help="comma-separated BIG-bench tasks")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--flip", type=float, default=0.25)
    ap.add_argument("--probe", type=int, default=24, help="flipped and clean probe pairs each")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(C.ROOT / "docs" / "benchmarks" / "bench_dynamics.json"))
    ap.add_argument("--png", default=str(C.ROOT / "docs" / "benchmarks" / "bench_dynamics.png"))
    ap.add_argument("--results-md", default=str(C.ROOT / "docs" / "results.md"))
    a = ap.parse_args(argv)

    from gradproj.core.objectives import PreferenceSettings
    from benchmarks.harness import dynamics
    from benchmarks.harness import plots
    from gradproj.evaluation.runner import Continuation, HeldOut
    from benchmarks.harness.tables import replace_between
    from benchmarks.harness.tasks import load_task
    from gradproj.training.train import TrainSettings, train_adapter

    info = C.machine_info(("transformers", "peft", "trl"))
    C.log(C.machine_line(info))
    task = load_task(a.data, a.n_train, 8, a.n_test, a.flip, 0,
                     tasks=a.bigbench_tasks.split(",") if a.bigbench_tasks else None)
    pref = PreferenceSettings(max_length=a.max_length)
    training = TrainSettings(lr=a.lr, batch_size=a.batch, epochs=1.0)
    work = Path("/tmp/gradproj-bench-dynamics")
    with C.quiet(a.threads):
        loaded = C.load_smollm2()
        train_adapter(loaded, task.train, training, work / "theta", pref=pref, overwrite=True,
                      progress=False)                                          # θ
        cont = Continuation(loaded, HeldOut(loaded, task.test, pref), training, pref, work)
        flipped = [p for p in task.train if p.id in task.flipped][:a.probe]
        clean = [p for p in task.train if p.id not in task.flipped][:a.probe]
        probes = {"heldout": cont.heldout, "flipped": HeldOut(loaded, flipped, pref),
                  "clean": HeldOut(loaded, clean, pref)}
        runs = []
        for seed in a.seeds:
            runs.append(dynamics.trajectory(cont, task.train, seed, probes))
            C.log(dynamics.markdown(runs[-1:], task.flipped).splitlines()[-1])
    C.write_json(Path(a.json), {"machine": info, "settings": vars(a), "source": task.source,
                                "n_train": len(task.train), "n_flipped": len(task.flipped),
                                "n_test": len(task.test), "runs": runs,
                                "flipped": sorted(task.flipped),
                                "composition": [dynamics.composition(r, task.flipped)
                                                for r in runs]})
    plots.dynamics_plot(runs, Path(a.png))
    text = (f"{C.machine_line(info)}; {task.source}: {len(task.train)} training pairs "
            f"({len(task.flipped)} flipped), {len(task.test)} held-out; probes of "
            f"{len(flipped)} flipped and {len(clean)} clean training pairs; lr {a.lr}, batch "
            f"{a.batch}.\n\n{dynamics.markdown(runs, task.flipped)}\n\n"
            f"![bench_dynamics]({Path(a.png).name})")
    print("\n" + text)
    if replace_between(a.results_md, BEGIN, END, text):
        C.log(f"table written into {a.results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
