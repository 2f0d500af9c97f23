"""The ``gradproj`` command: a thin click layer over the Python API (same names, same settings).

Every setting's option, default, choices and help come from its dataclass field
(gradproj.cli.options). A user error (bad input, an incompatible or corrupt store) prints
``gradproj: error: <one line>`` on stderr and exits with code 2; any other exception is a bug in
gradproj and says so (traceback, exit code 1).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from dataclasses import replace

import click

from gradproj.attribution.influence import InfluenceSettings
from gradproj.cli.options import flatten, settings_from, settings_options
from gradproj.cli.replay import config_option, write_config
from gradproj.core.data import DataSettings
from gradproj.core.errors import BadInput, GradprojError
from gradproj.core.model import ModelSettings
from gradproj.core.objectives import PreferenceSettings
from gradproj.core.settings import parse_floats
from gradproj.evaluation.ablate import AblateSettings
from gradproj.demo.run import DemoSettings
from gradproj.pipeline.run import RunInputs, SelectSettings
from gradproj.store.build import StoreSettings
from gradproj.training.train import TrainSettings

PATH = click.Path()


def _quiet_libraries(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="peft")
        import transformers
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        for name in ("peft", "trl", "accelerate", "datasets"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import datasets
        datasets.disable_progress_bars()


def handle_errors(fn):
    """User errors: one line, exit 2. Anything else: a bug, reported as one (exit 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradprojError as err:
            click.echo(f"gradproj: error: {err}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as err:   # noqa: BLE001 - the last line of defence: name it a bug
            traceback.print_exc()
            click.echo(f"gradproj: internal error (a bug in gradproj, please report it with the "
                       f"traceback above): {type(err).__name__}: {err}", err=True)
            sys.exit(1)
    return wrapper


def single_process(fn):
    """Refuse, in one line, a command that does not run across torchrun ranks."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from gradproj.core.distributed import env_world_size

        if env_world_size() > 1:
            raise BadInput(f"gradproj {fn.__name__} runs in one process; run it without "
                           "torchrun (select, score, train, influence and build-store run "
                           "across ranks)")
        return fn(*args, **kwargs)
    return wrapper


model_options = settings_options(ModelSettings)
data_options = settings_options(DataSettings)
pref_options = settings_options(PreferenceSettings)
resume_option = click.option(
    "--resume", is_flag=True,
    help="Continue an interrupted training stage from its last checkpoint (--save-steps).")
force_objective_option = click.option(
    "--force-objective", is_flag=True,
    help="Allow an adapter trained with another objective than --loss (on purpose).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress and library messages.")
@click.version_option(package_name="gradproj")
def main(verbose):
    """gradproj: choose the preference pairs worth aligning a model on (TIF, LossDiff, IRM)."""
    _quiet_libraries(verbose)


def _load(settings: ModelSettings):
    from gradproj.core.model import load_model

    return load_model(settings)


@main.command()
@config_option
@flatten(model_options, data_options, pref_options, settings_options(TrainSettings))
@click.option("--data", required=True, type=PATH, help="Preference pairs to train on.")
@click.option("--out", required=True, type=PATH, help="Folder for the trained adapter.")
@click.option("--init-adapter", default=None, type=PATH,
              help="Continue training this adapter (same as --adapter).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@force_objective_option
@resume_option
@handle_errors
def train(data, out, init_adapter, force, force_objective, resume, **kw):
    """Train a LoRA adapter with the --loss objective on a pairs file (trl DPOTrainer) and save
    it with its optimizer state, learning-rate schedule and train.json."""
    from gradproj.training.train import train_adapter

    settings, pref = settings_from(TrainSettings, kw), settings_from(PreferenceSettings, kw)
    rank, _, _ = _distributed(kw)       # under torchrun: data-parallel, rank 0 writes
    model = settings_from(ModelSettings, kw)
    if init_adapter:
        model = replace(model, adapter=init_adapter)
    pairs = settings_from(DataSettings, kw).load(data)
    result = train_adapter(_load(model), pairs, settings, out, pref=pref, overwrite=force,
                           force_objective=force_objective, resume=resume)
    if rank != 0:
        return
    write_config(result.out_dir, click.get_current_context())
    click.echo(f"trained {result.n_pairs} pairs, {result.steps} steps in {result.seconds:.1f}s; "
               f"final loss {result.losses[-1]:.4f}; adapter in {result.out_dir}")
    if result.excluded:
        click.echo(f"{len(result.excluded)} pairs excluded by truncation (see train.json)")


@main.command()
@flatten(model_options, data_options, pref_options,
         settings_options(TrainSettings, only=("batch_size",)))
@click.option("--data", required=True, type=PATH, help="Preference pairs to score.")
@click.option("--out", default=None, type=PATH, help="Also write the metrics as JSON.")
@handle_errors
@single_process
def evaluate(data, out, **kw):
    """Preference accuracy, mean margin and mean loss of a model (and adapter) on pairs, under
    the --loss objective."""
    from gradproj.training.evaluate import evaluate as run_evaluate

    pref = settings_from(PreferenceSettings, kw)
    batch_size = settings_from(TrainSettings, kw, only=("batch_size",)).batch_size
    model = settings_from(ModelSettings, kw)
    pairs = settings_from(DataSettings, kw).load(data)
    result = run_evaluate(_load(model), pairs, pref, batch_size, progress=True)
    for key, value in result.to_dict().items():
        click.echo(f"{key:16s} {value:.4f}" if isinstance(value, float) else f"{key:16s} {value}")
    if out:
        with open(out, "w") as f:
            json.dump(dict(result.to_dict(), objective=pref.objective().settings()), f, indent=2)


@main.command("build-store")
@config_option
@flatten(model_options, data_options, pref_options, settings_options(StoreSettings))
@click.option("--data", required=True, type=PATH, help="Training pairs to store.")
@click.option("--out", required=True, type=PATH, help="Store directory.")
@click.option("--resume", is_flag=True, help="Continue an interrupted build of this store.")
@force_objective_option
@handle_errors
def build_store_cmd(data, out, resume, force_objective, **kw):
    """Project every pair's LoRA gradient of the objective into a store on disk."""
    from gradproj.store.build import build_store

    settings, pref = settings_from(StoreSettings, kw), settings_from(PreferenceSettings, kw)
    rank, world, barrier = _distributed(kw)
    model = settings_from(ModelSettings, kw)
    pairs = settings_from(DataSettings, kw).load(data)
    store = build_store(_load(model), pairs, settings, out, pref=pref, resume=resume, rank=rank,
                        world_size=world, barrier=barrier, force_objective=force_objective)
    if rank != 0:
        return
    write_config(store.root, click.get_current_context())
    t = store.manifest["timing"]
    click.echo(f"stored {len(store)} pairs ({len(store.manifest['excluded'])} excluded) at "
               f"k={store.k} in {store.root}; {len(store) / t['total']:.2f} pairs/s, projection "
               f"{t['projection'] / max(t['projection'] + t['gradients'], 1e-9):.0%} of the "
               "compute time")


def _distributed(kw) -> tuple[int, int, object]:
    """(rank, world size, barrier) under torchrun (gloo on CPU, nccl on CUDA), else (0, 1, None).

    Each rank uses cuda:LOCAL_RANK when the device is CUDA (``kw["device"]`` is updated)."""
    from gradproj.core import distributed

    kw["device"] = distributed.init(kw["device"])
    if distributed.world_size() == 1:
        return 0, 1, None
    return distributed.rank(), distributed.world_size(), distributed.barrier


@main.group()
def store():
    """Operations on gradient stores."""


@store.command("merge")
@click.argument("stores", nargs=-1, required=True, type=PATH)
@click.option("--out", required=True, type=PATH, help="New store directory.")
@handle_errors
def store_merge(stores, out):
    """Join stores built with the same spec (rows in argument order)."""
    from gradproj.store.shards import Store, merge_stores

    merged = merge_stores([Store(s) for s in stores], out)
    click.echo(f"merged {len(stores)} stores: {len(merged)} rows in {len(merged.shards)} shards "
               f"-> {merged.root}")


@main.command()
@click.argument("store", type=PATH)
@click.option("--no-verify", is_flag=True, help="Skip the shard checksums.")
@handle_errors
def inspect(store, no_verify):
    """Print a store's manifest summary, row counts by status, disk size and projector spec."""
    from gradproj.core.objectives import Objective
    from gradproj.store.shards import Store

    st = Store(store, verify=not no_verify)     # inspect always hashes every file
    m = st.manifest
    click.echo(f"store        {st.root}  ({'complete' if st.complete else 'INCOMPLETE'}, schema "
               f"{m.get('schema_version_on_disk', m['schema_version'])})")
    click.echo(f"rows         {len(st)} in {len(st.shards)} shards; "
               + ", ".join(f"{k}: {v}" for k, v in st.status_counts().items()))
    click.echo(f"excluded     {len(m.get('excluded', {}))} pairs (tokenization)")
    click.echo(f"disk         {st.disk_bytes() / 2**20:.1f} MiB ({m['storage_dtype']})")
    click.echo(f"model        {m['model']['name']} base {m['model']['base_fingerprint']}, "
               f"adapter {m['adapter']['path'] or 'fresh LoRA'} {m['adapter']['fingerprint']}")
    click.echo(f"objective    {Objective.from_settings(m['objective']).describe()}, "
               f"gradient {m['grad_type']}, max_length {m['max_length']}")
    click.echo("projector    " + ", ".join(f"{k}={v}" for k, v in m["projector"].items()))
    click.echo(f"fingerprints tokenizer {m['tokenizer_fingerprint']}, data {m['data_fingerprint']}")


@main.command()
@config_option
@click.option("--store", "stores", required=True, multiple=True, type=PATH,
              help="Store built by build-store; repeat for a TracIn sum over checkpoints.")
@click.option("--store-weights", default=None,
              help="Comma-separated weights of the stores (their learning rates); default 1 each.")
@flatten(data_options, settings_options(InfluenceSettings))
@click.option("--val", required=True, type=PATH, help="Validation pairs.")
@click.option("--out", required=True, type=PATH, help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--no-verify", is_flag=True,
              help="Skip the shard checksums. By default a shard file is hashed when it changed "
                   "since it was last verified (size, mtime, inode); `gradproj inspect` hashes "
                   "all of them.")
@handle_errors
def influence(stores, store_weights, val, out, device, no_verify, **kw):
    """Influence of every stored training pair on a new validation set, TIF and top-k; the
    objective is the store's own."""
    from gradproj.attribution.influence import compute_influence, write_influence
    from gradproj.store.shards import Store

    settings = settings_from(InfluenceSettings, kw)
    dist = {"device": device}
    rank, _, barrier = _distributed(dist)   # under torchrun: rank 0 computes, the others wait
    if rank != 0:
        barrier()
        return
    device = dist["device"]
    weights = None
    if store_weights:
        try:
            weights = list(parse_floats(store_weights))
        except GradprojError as err:
            raise type(err)(f"--store-weights: {err}") from None
    opened = [Store(s, verify=False if no_verify else "auto") for s in stores]
    pairs = settings_from(DataSettings, kw).load(val)
    result = compute_influence(opened, pairs, settings, weights, device)
    summary = write_influence(result, out, {"stores": list(stores), "val": val,
                                            "settings": settings.to_dict(),
                                            "objective": opened[0].manifest["objective"]})
    write_config(out, click.get_current_context())
    if barrier is not None:
        barrier()
    t = result.seconds
    click.echo(f"N {summary['n_train']}  M {summary['n_val']}  validation gradients "
               f"{t['validation_gradients']:.2f}s  lookup {t['lookup']:.2f}s")
    click.echo(f"TIF band {settings.tif_band} -> IF in ({result.deltas[0]:.4g}, "
               f"{result.deltas[1]:.4g}): kept {summary['tif_kept']} of {summary['n_train']}")
    click.echo(f"wrote {out}/influence.parquet, topk.jsonl, summary.json")


RUN_STORE = ("proj_dim", "proj_kind")
"""The store settings select exposes; its batch is --batch-size, like every stage's."""
RUN_OPTIONS = ("aux_adapter", "influence", "train_split", "val_split", "field")
pipeline_options = flatten(
    model_options, pref_options,
    settings_options(TrainSettings),
    settings_options(StoreSettings, only=RUN_STORE),
    settings_options(RunInputs, only=RUN_OPTIONS),
    click.option("--train", "train_path", required=True, type=PATH,
                 help="Training pairs to score and select from."),
    click.option("--val", "val_path", required=True, type=PATH,
                 help="Validation pairs (the target the selection serves)."),
    click.option("--out", required=True, type=PATH, help="Output folder."),
    click.option("--force", is_flag=True, help="Replace a folder made for other inputs."),
    force_objective_option,
    resume_option,
)


def _run_inputs(kw) -> RunInputs:
    model = settings_from(ModelSettings, kw)
    return settings_from(
        RunInputs, kw, only=RUN_OPTIONS, model=replace(model, adapter=None),
        train=kw.pop("train_path"), val=kw.pop("val_path"), adapter=model.adapter,
        training=(training := settings_from(TrainSettings, kw)),
        store=settings_from(StoreSettings, kw, only=RUN_STORE, batch_size=training.batch_size),
        pref=settings_from(PreferenceSettings, kw))


@main.command("select")
@config_option
@pipeline_options
@settings_options(SelectSettings)
@handle_errors
def select_cmd(force, force_objective, resume, **kw):
    """Score the training pairs and keep the valuable ones (LossDiff-IRM by default); computes
    only what --out does not hold yet."""
    from gradproj.pipeline.run import run_select

    settings = settings_from(SelectSettings, kw)
    out = kw.pop("out")
    rank, _, _ = _distributed(kw)   # under torchrun: every stage across the ranks (see run.py)
    result = run_select(_run_inputs(kw), out, settings, force=force,
                        force_objective=force_objective, resume=resume)
    if rank != 0:
        return
    write_config(result.out, click.get_current_context())
    s = result.selection
    click.echo(f"{s.method}: kept {len(s.kept)} of {len(s.ids)} pairs ({s.keep_fraction:.1%})"
               + (f"; computed: {', '.join(result.trained)}" if result.trained
                  else "; reused everything in the folder"))
    for reason, n in sorted(s.reason_counts().items()):
        click.echo(f"  dropped {n:5d}  {reason}")
    click.echo(f"wrote {result.out}/selected.jsonl, scores.parquet, selection.json, report.md")


@main.command()
@config_option
@pipeline_options
@settings_options(AblateSettings)
@click.option("--test", "test_path", required=True, type=PATH,
              help="Held-out pairs every continued run is evaluated on.")
@click.option("--test-split", default="train", show_default=True,
              help="Split of --test (a saved DatasetDict or hub dataset), e.g. test_prefs.")
@handle_errors
@single_process
def ablate(force, force_objective, resume, test_path, test_split, **kw):
    """Does selection help on this data? Each rule (and seed) continued from θ on its
    selection and evaluated on --test: ablation.json, ablation.md, ablation.png."""
    from gradproj.evaluation.ablate import run_ablation

    settings = settings_from(AblateSettings, kw)
    out = kw.pop("out")
    record = run_ablation(_run_inputs(kw), test_path, out, settings, test_split=test_split,
                          force=force, echo=click.echo, resume=resume)
    write_config(out, click.get_current_context())
    for row in record["summary"]:
        click.echo(f"{row['rule']:>13s}: held-out loss {row['mean_loss']:.4f} ± "
                   f"{row['mean_loss_std']:.4f}, policy accuracy {row['policy_accuracy']:.3f}")
    click.echo(f"wrote {out}/ablation.json, ablation.md, ablation.png")


@main.command()
@config_option
@pipeline_options
@click.option("--with-if", is_flag=True, help="Also build the store and compute IF/TIF.")
@handle_errors
def score(with_if, force, force_objective, resume, **kw):
    """The scoring step alone: IRM and LossDiff (and IF/TIF) into --out/scores.parquet."""
    from gradproj.pipeline.run import Pipeline

    out = kw.pop("out")
    rank, _, _ = _distributed(kw)   # under torchrun: every stage across the ranks (see run.py)
    pipe = Pipeline(_run_inputs(kw), out, force=force, force_objective=force_objective,
                    resume=resume)
    table = pipe.scores(with_if)
    if rank != 0:
        return
    write_config(out, click.get_current_context())
    click.echo(f"scored {len(table.ids)} pairs: {', '.join(table.columns)} -> {out}/scores.parquet")


@main.command()
@click.argument("dir_a", type=PATH)
@click.argument("dir_b", type=PATH)
@click.option("--out", default=None, type=PATH, help="Also write the result as JSON.")
@handle_errors
def compare(dir_a, dir_b, out):
    """How two runs (two models) score the same pairs: rank correlation and sign flips."""
    from gradproj.pipeline.compare import compare_dirs

    result = compare_dirs(dir_a, dir_b)
    click.echo(f"{result['n_common']} pairs in common")
    click.echo(f"{'score':10s} {'n':>6s} {'spearman':>9s} {'pearson':>8s} {'+A/-B':>6s} {'-A/+B':>6s}")
    for name, r in result["scores"].items():
        click.echo(f"{name:10s} {r['n']:6d} {r['spearman']:9.3f} {r['pearson']:8.3f} "
                   f"{r.get('helpful_a_harmful_b', ''):>6} {r.get('harmful_a_helpful_b', ''):>6}")
    if "selection_overlap" in result:
        click.echo(f"selection overlap coefficient: {result['selection_overlap']:.3f}")
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=2)


@main.command()
@settings_options(DemoSettings)
@handle_errors
@single_process
def demo(**kw):
    """The pipeline on SmolLM2 and a generated task with flipped pairs: warm-up, scores, and
    every selection rule compared by held-out accuracy after continued training."""
    from gradproj.demo.run import run_demo

    run_demo(settings_from(DemoSettings, kw), echo=click.echo)


if __name__ == "__main__":
    main()
