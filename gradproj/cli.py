"""The ``gradproj`` command: a thin click layer over the Python API (same names, same settings).

A user error prints ``gradproj: error: <one line>`` on stderr and exits with code 2.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys

import click

from gradproj.core.errors import GradprojError


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


def model_options(fn):
    """--model, --adapter, LoRA, dtype and device options shared by every command with a model."""
    options = [
        click.option("--model", "model", default="smollm2", show_default=True,
                     help="HF model folder, hub id, .gguf file, or 'smollm2' (embedded "
                          "SmolLM2-135M-Instruct)."),
        click.option("--adapter", "adapter", default=None, type=click.Path(),
                     help="Existing peft adapter folder to start from (else a fresh LoRA)."),
        click.option("--lora-r", default=8, show_default=True, help="LoRA rank of a fresh adapter."),
        click.option("--lora-alpha", default=16.0, show_default=True, help="LoRA alpha."),
        click.option("--lora-targets", default="q_proj,v_proj", show_default=True,
                     help="Comma-separated module names that get LoRA (q/k/v/o, MLP ...)."),
        click.option("--dtype", default="float32", show_default=True,
                     type=click.Choice(["float32", "bfloat16", "float16"]), help="Weights dtype."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda when present), cpu, cuda, cuda:N."),
        click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def data_options(fn):
    fn = click.option("--split", default="train", show_default=True,
                      help="Split of a saved DatasetDict or hub dataset.")(fn)
    fn = click.option("--field", "fields", multiple=True, metavar="NAME=COLUMN",
                      help="Remap an input column, e.g. --field chosen=better (repeatable; "
                           "names: prompt, chosen, rejected, id).")(fn)
    return fn


def _model_settings(kw, adapter=None):
    from gradproj.core.model import LoraSettings, ModelSettings

    targets = tuple(t.strip() for t in kw.pop("lora_targets").split(",") if t.strip())
    lora = LoraSettings(r=kw.pop("lora_r"), alpha=kw.pop("lora_alpha"), targets=targets)
    return ModelSettings(model=kw.pop("model"), adapter=adapter or kw.pop("adapter", None),
                         lora=lora, dtype=kw.pop("dtype"), device=kw.pop("device"),
                         trust_remote_code=kw.pop("trust_remote_code"))


def _load_data(path, fields, split):
    from gradproj.core.data import FieldMap, load_pairs

    return load_pairs(path, FieldMap.parse(fields), split=split)


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GradprojError as err:
            click.echo(f"gradproj: error: {err}", err=True)
            sys.exit(2)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress and library messages.")
@click.version_option(package_name="gradproj")
def main(verbose):
    """gradproj: choose the preference pairs worth aligning a model on (TIF, LossDiff, IRM)."""
    _quiet_libraries(verbose)


@main.command()
@model_options
@data_options
@click.option("--data", required=True, type=click.Path(), help="Preference pairs to train on.")
@click.option("--out", required=True, type=click.Path(), help="Folder for the trained adapter.")
@click.option("--init-adapter", default=None, type=click.Path(),
              help="Continue training this adapter (same as --adapter).")
@click.option("--epochs", default=1.0, show_default=True, help="Passes over the data.")
@click.option("--lr", default=5e-4, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--batch-size", default=8, show_default=True, help="Pairs per step.")
@click.option("--grad-accum", default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--beta", default=0.1, show_default=True, help="DPO beta.")
@click.option("--seed", default=0, show_default=True, help="Shuffling and LoRA init seed.")
@click.option("--scheduler", default="linear", show_default=True, help="LR schedule.")
@click.option("--warmup-ratio", default=0.0, show_default=True, help="Warm-up share of steps.")
@click.option("--max-length", default=512, show_default=True,
              help="Tokens per sequence; the prompt is cut from the left first.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out folder.")
@handle_errors
def train(data, out, init_adapter, fields, split, force, **kw):
    """DPO-train a LoRA adapter on a pairs file (trl DPOTrainer) and save it with its optimizer
    state, learning-rate schedule and train.json."""
    from gradproj.core.model import load_model
    from gradproj.training.train import TrainSettings, train_adapter

    pairs = _load_data(data, fields, split)
    settings = TrainSettings(**{k: kw.pop(k) for k in (
        "epochs", "lr", "batch_size", "grad_accum", "beta", "seed", "scheduler",
        "warmup_ratio", "max_length")})
    ms = _model_settings(kw, adapter=init_adapter)
    loaded = load_model(ms)
    result = train_adapter(loaded, pairs, settings, out, overwrite=force)
    click.echo(f"trained {result.n_pairs} pairs, {result.steps} steps in {result.seconds:.1f}s; "
               f"final loss {result.losses[-1]:.4f}; adapter in {result.out_dir}")
    if result.excluded:
        click.echo(f"{len(result.excluded)} pairs excluded by truncation (see train.json)")


@main.command()
@model_options
@data_options
@click.option("--data", required=True, type=click.Path(), help="Preference pairs to score.")
@click.option("--beta", default=0.1, show_default=True, help="DPO beta.")
@click.option("--max-length", default=512, show_default=True, help="Tokens per sequence.")
@click.option("--batch-size", default=8, show_default=True, help="Pairs per forward pass.")
@click.option("--out", default=None, type=click.Path(), help="Also write the metrics as JSON.")
@handle_errors
def evaluate(data, fields, split, beta, max_length, batch_size, out, **kw):
    """Preference accuracy, mean margin and mean DPO loss of a model (and adapter) on pairs."""
    from gradproj.training.evaluate import evaluate as run_evaluate
    from gradproj.core.model import load_model

    pairs = _load_data(data, fields, split)
    loaded = load_model(_model_settings(kw))
    result = run_evaluate(loaded, pairs, beta, max_length, batch_size)
    for key, value in result.to_dict().items():
        click.echo(f"{key:16s} {value:.4f}" if isinstance(value, float) else f"{key:16s} {value}")
    if out:
        with open(out, "w") as f:
            json.dump(result.to_dict(), f, indent=2)


@main.command("build-store")
@model_options
@data_options
@click.option("--data", required=True, type=click.Path(), help="Training pairs to store.")
@click.option("--out", required=True, type=click.Path(), help="Store directory.")
@click.option("--proj-dim", default=8192, show_default=True, help="Projected dimension k.")
@click.option("--proj-kind", default="rademacher", show_default=True,
              type=click.Choice(["rademacher", "gaussian", "sjlt", "trak-basic", "trak-cuda"]),
              help="Projection: ours (device-independent) or TRAK's projectors.")
@click.option("--seed", default=0, show_default=True, help="Projection seed.")
@click.option("--grad-type", default="sgd", show_default=True, type=click.Choice(["sgd", "adam"]),
              help="adam: LESS-style m'/(sqrt(v')+eps) from the adapter's optimizer state.")
@click.option("--loss", default="dpo", show_default=True, type=click.Choice(["dpo", "slic"]),
              help="Pairwise loss whose gradient is stored.")
@click.option("--beta", default=0.1, show_default=True, help="DPO beta.")
@click.option("--max-length", default=512, show_default=True, help="Tokens per sequence.")
@click.option("--batch-size", default=8, show_default=True, help="Pairs per backward pass.")
@click.option("--proj-batch", default=64, show_default=True,
              help="Pairs buffered before projecting (amortises generating R).")
@click.option("--shard-size", default=1024, show_default=True, help="Rows per shard file.")
@click.option("--proj-cache-mb", default=0.0, show_default=True,
              help="Memory budget for caching blocks of the projection matrix.")
@click.option("--sjlt-s", default=4, show_default=True, help="Non-zeros per coordinate (sjlt).")
@click.option("--resume", is_flag=True, help="Continue an interrupted build of this store.")
@handle_errors
def build_store_cmd(data, out, fields, split, resume, **kw):
    """Project every pair's LoRA gradient of the DPO loss into a store on disk."""
    from gradproj.store.build import StoreSettings, build_store
    from gradproj.core.model import load_model

    pairs = _load_data(data, fields, split)
    settings = StoreSettings(**{k: kw.pop(k) for k in (
        "proj_dim", "proj_kind", "seed", "grad_type", "loss", "beta", "max_length",
        "batch_size", "proj_batch", "shard_size", "proj_cache_mb", "sjlt_s")})
    rank, world, barrier = _distributed(kw)
    loaded = load_model(_model_settings(kw))
    store = build_store(loaded, pairs, settings, out, resume=resume, rank=rank,
                        world_size=world, barrier=barrier)
    if rank != 0:
        return
    t = store.manifest["timing"]
    click.echo(f"stored {len(store)} pairs ({len(store.manifest['excluded'])} excluded) at "
               f"k={store.k} in {store.root}; {len(store) / t['total']:.2f} pairs/s, projection "
               f"{t['projection'] / max(t['projection'] + t['gradients'], 1e-9):.0%} of the "
               "compute time")


def _distributed(kw) -> tuple[int, int, object]:
    """(rank, world size, barrier) under torchrun (gloo on CPU, nccl on CUDA), else (0, 1, None).

    Each rank uses cuda:LOCAL_RANK when the device is CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    import torch
    import torch.distributed as dist

    from gradproj.core.model import resolve_device

    cuda = resolve_device(kw["device"]).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        kw["device"] = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), dist.barrier


@main.group()
def store():
    """Operations on gradient stores."""


@store.command("merge")
@click.argument("stores", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="New store directory.")
@handle_errors
def store_merge(stores, out):
    """Join stores built with the same spec (rows in argument order)."""
    from gradproj.store.shards import Store, merge_stores

    merged = merge_stores([Store(s) for s in stores], out)
    click.echo(f"merged {len(stores)} stores: {len(merged)} rows in {len(merged.shards)} shards "
               f"-> {merged.root}")


@main.command()
@click.argument("store", type=click.Path())
@click.option("--no-verify", is_flag=True, help="Skip the shard checksums.")
@handle_errors
def inspect(store, no_verify):
    """Print a store's manifest summary, row counts by status, disk size and projector spec."""
    from gradproj.store.shards import Store

    st = Store(store, verify=not no_verify)     # inspect always hashes every file
    m = st.manifest
    click.echo(f"store        {st.root}  ({'complete' if st.complete else 'INCOMPLETE'})")
    click.echo(f"rows         {len(st)} in {len(st.shards)} shards; "
               + ", ".join(f"{k}: {v}" for k, v in st.status_counts().items()))
    click.echo(f"excluded     {len(m.get('excluded', {}))} pairs (tokenization)")
    click.echo(f"disk         {st.disk_bytes() / 2**20:.1f} MiB ({m['storage_dtype']})")
    click.echo(f"model        {m['model']['name']} base {m['model']['base_fingerprint']}, "
               f"adapter {m['adapter']['path'] or 'fresh LoRA'} {m['adapter']['fingerprint']}")
    click.echo(f"loss         {m['loss']['name']} beta={m['loss']['beta']}, "
               f"gradient {m['grad_type']}, max_length {m['max_length']}")
    click.echo("projector    " + ", ".join(f"{k}={v}" for k, v in m["projector"].items()))
    click.echo(f"fingerprints tokenizer {m['tokenizer_fingerprint']}, data {m['data_fingerprint']}")


def _floats(text: str, name: str, n: int | None = None) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise GradprojError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if n is not None and len(values) != n:
        raise GradprojError(f"{name} needs {n} comma-separated numbers, got {text!r}")
    return values


@main.command()
@click.option("--store", "stores", required=True, multiple=True, type=click.Path(),
              help="Store built by build-store; repeat for a TracIn sum over checkpoints.")
@click.option("--store-weights", default=None,
              help="Comma-separated weights of the stores (their learning rates); default 1 each.")
@data_options
@click.option("--val", required=True, type=click.Path(), help="Validation pairs.")
@click.option("--out", required=True, type=click.Path(), help="Output folder.")
@click.option("--tif-band", default="0.2,0.84", show_default=True,
              help="Quantiles LOW,HIGH of IF; TIF keeps pairs strictly between them.")
@click.option("--top-k", default=10, show_default=True,
              help="Most helpful/harmful training pairs per validation pair.")
@click.option("--normalize", is_flag=True, help="Cosine instead of inner product.")
@click.option("--index", "index_kind", default="flat", show_default=True,
              type=click.Choice(["flat", "ivf-pq"]), help="FAISS index for the top-k search.")
@click.option("--nlist", default=256, show_default=True, help="IVF cells (ivf-pq).")
@click.option("--m", "pq_m", default=64, show_default=True, help="PQ sub-quantizers (ivf-pq).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--no-verify", is_flag=True,
              help="Skip the shard checksums. By default a shard file is hashed when it changed "
                   "since it was last verified (size, mtime, inode); `gradproj inspect` hashes "
                   "all of them.")
@handle_errors
def influence(stores, store_weights, fields, split, val, out, tif_band, top_k, normalize,
              index_kind, nlist, pq_m, device, no_verify):
    """Influence of every stored training pair on a new validation set, TIF and top-k."""
    from gradproj.store.index import IndexSettings
    from gradproj.attribution.influence import InfluenceSettings, compute_influence, write_influence
    from gradproj.store.shards import Store

    settings = InfluenceSettings(tif_band=_floats(tif_band, "--tif-band", 2), top_k=top_k,
                                 normalize=normalize,
                                 index=IndexSettings(kind=index_kind, nlist=nlist, m=pq_m))
    weights = list(_floats(store_weights, "--store-weights")) if store_weights else None
    opened = [Store(s, verify=False if no_verify else "auto") for s in stores]
    pairs = _load_data(val, fields, split)
    result = compute_influence(opened, pairs, settings, weights, device)
    summary = write_influence(result, out, {"stores": list(stores), "val": val,
                                            "tif_band": list(settings.tif_band),
                                            "normalize": normalize, "index": index_kind})
    t = result.seconds
    click.echo(f"N {summary['n_train']}  M {summary['n_val']}  validation gradients "
               f"{t['validation_gradients']:.2f}s  lookup {t['lookup']:.2f}s")
    click.echo(f"TIF band {settings.tif_band} -> IF in ({result.deltas[0]:.4g}, "
               f"{result.deltas[1]:.4g}): kept {summary['tif_kept']} of {summary['n_train']}")
    click.echo(f"wrote {out}/influence.parquet, topk.jsonl, summary.json")


def pipeline_options(fn):
    """Options of the select/score pipeline: data, adapters, training and store settings."""
    options = [
        click.option("--train", "train_path", required=True, type=click.Path(),
                     help="Training pairs to score and select from."),
        click.option("--val", "val_path", required=True, type=click.Path(),
                     help="Validation pairs (the target the selection serves)."),
        click.option("--out", required=True, type=click.Path(), help="Output folder."),
        click.option("--aux-adapter", default=None, type=click.Path(),
                     help="θ_V (else trained: 1 epoch on --val from θ)."),
        click.option("--epochs", default=1.0, show_default=True,
                     help="Epochs of the warm-up and auxiliary training."),
        click.option("--lr", default=5e-4, show_default=True, help="Learning rate of both."),
        click.option("--batch-size", default=8, show_default=True, help="Pairs per step."),
        click.option("--beta", default=0.1, show_default=True, help="DPO beta."),
        click.option("--max-length", default=512, show_default=True, help="Tokens per sequence."),
        click.option("--seed", default=0, show_default=True, help="Training and random seed."),
        click.option("--proj-dim", default=8192, show_default=True, help="Store k (for IF)."),
        click.option("--proj-kind", default="rademacher", show_default=True,
                     type=click.Choice(["rademacher", "gaussian", "sjlt"]),
                     help="Store projection (for IF)."),
        click.option("--tif-band", default="0.2,0.84", show_default=True,
                     help="TIF quantile band of the influence step."),
        click.option("--force", is_flag=True, help="Replace a folder made for other inputs."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_inputs(kw):
    from gradproj.store.build import StoreSettings
    from gradproj.pipeline.run import RunInputs
    from gradproj.training.train import TrainSettings

    training = TrainSettings(epochs=kw.pop("epochs"), lr=kw.pop("lr"),
                             batch_size=kw.pop("batch_size"), beta=kw.pop("beta"),
                             seed=kw.pop("seed"), max_length=kw.pop("max_length"))
    store = StoreSettings(proj_dim=kw.pop("proj_dim"), proj_kind=kw.pop("proj_kind"),
                          beta=training.beta, max_length=training.max_length)
    adapter = kw.pop("adapter")
    train_path, val_path, aux = kw.pop("train_path"), kw.pop("val_path"), kw.pop("aux_adapter")
    tif_band = _floats(kw.pop("tif_band"), "--tif-band", 2)
    return RunInputs(model=_model_settings(kw), train=train_path, val=val_path, adapter=adapter,
                     aux_adapter=aux, training=training, store=store, tif_band=tif_band)


@main.command("select")
@model_options
@pipeline_options
@click.option("--method", default="lossdiff-irm", show_default=True,
              type=click.Choice(["lossdiff-irm", "tif", "lossdiff", "irm", "top-if", "random",
                                 "all"]), help="Selection rule.")
@click.option("--keep", default=0.64, show_default=True, help="Fraction of pairs to keep.")
@click.option("--lossdiff-band", default=None, help="Explicit LOW,HIGH quantile band of LossDiff.")
@click.option("--irm-band", default=None, help="Explicit LOW,HIGH quantile band of IRM.")
@click.option("--if-band", default=None, help="Explicit LOW,HIGH quantile band of IF (tif).")
@click.option("--low-share", default=5 / 9, show_default=True,
              help="Share of the trimmed mass taken from each score's low tail.")
@click.option("--with-if", is_flag=True, help="Also compute IF/TIF for the report.")
@handle_errors
def select_cmd(method, keep, lossdiff_band, irm_band, if_band, low_share, with_if, force, **kw):
    """Score the training pairs and keep the valuable ones (LossDiff-IRM by default); computes
    only what --out does not hold yet."""
    from gradproj.pipeline.run import SelectSettings, run_select

    bands = {name: _floats(text, f"--{name}-band", 2) for name, text in
             (("lossdiff", lossdiff_band), ("irm", irm_band), ("if", if_band)) if text}
    settings = SelectSettings(method=method, keep=keep, bands=bands, low_share=low_share,
                              seed=kw["seed"], with_if=with_if)
    result = run_select(_run_inputs(kw), kw.pop("out"), settings, force=force)
    s = result.selection
    click.echo(f"{s.method}: kept {len(s.kept)} of {len(s.ids)} pairs ({s.keep_fraction:.1%})"
               + (f"; computed: {', '.join(result.trained)}" if result.trained
                  else "; reused everything in the folder"))
    for reason, n in sorted(s.reason_counts().items()):
        click.echo(f"  dropped {n:5d}  {reason}")
    click.echo(f"wrote {result.out}/selected.jsonl, scores.parquet, selection.json, report.md")


@main.command()
@model_options
@pipeline_options
@click.option("--with-if", is_flag=True, help="Also build the store and compute IF/TIF.")
@handle_errors
def score(with_if, force, **kw):
    """The scoring step alone: IRM and LossDiff (and IF/TIF) into --out/scores.parquet."""
    from gradproj.pipeline.run import Pipeline

    out = kw.pop("out")
    pipe = Pipeline(_run_inputs(kw), out, force=force)
    table = pipe.scores(with_if)
    click.echo(f"scored {len(table.ids)} pairs: {', '.join(table.columns)} -> {out}/scores.parquet")


@main.command()
@click.argument("dir_a", type=click.Path())
@click.argument("dir_b", type=click.Path())
@click.option("--out", default=None, type=click.Path(), help="Also write the result as JSON.")
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
@click.option("--model", default="smollm2", show_default=True, help="Model to run the demo on.")
@click.option("--n-train", default=32, show_default=True, help="Generated training pairs.")
@click.option("--n-test", default=24, show_default=True, help="Generated held-out pairs.")
@click.option("--flip", default=0.25, show_default=True, help="Share of training pairs flipped.")
@click.option("--keep", default=0.64, show_default=True, help="Keep fraction of every rule.")
@click.option("--epochs", default=1.0, show_default=True, help="Epochs of each training stage.")
@click.option("--lr", default=2e-3, show_default=True, help="Learning rate.")
@click.option("--seed", default=0, show_default=True, help="Task and training seed.")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(),
              help="Folder for the demo's data, adapters and results.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@handle_errors
def demo(**kw):
    """The pipeline on SmolLM2 and a generated task with flipped pairs: warm-up, scores, and
    every selection rule compared by held-out accuracy after continued training."""
    from gradproj.experiments.demo import DemoSettings, run_demo

    run_demo(DemoSettings(**kw), echo=click.echo)


if __name__ == "__main__":
    main()
