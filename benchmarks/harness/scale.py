"""Cost at real sizes: a store build against a DPO training step on published architectures
with random weights (a model built from a config costs per pair what the real one does), and
the peak memory of each, measured two ways.

* :func:`torch_peak` — the highest sum of bytes torch holds in allocations made while a
  function runs (the profiler's allocation records, replayed in time order): what the tensors
  need, and what :func:`gradproj.plan.memory` estimates (less the weights, which exist
  before).
* :func:`rss_peak` — the process's resident high-water mark (VmHWM, reset first): what the
  machine must have, the Python runtime and the allocator's slack included.

:func:`compare` runs both stages on the same batch, alternately, and returns seconds, pairs/s,
peaks and the plan's estimates side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from gradproj.core.memory import release_heap
from gradproj.core.objectives import DPO, Objective
from gradproj.core.tokens import TokenizedPair, collate
from benchmarks.harness.measure import median, proc_status, reset_peak_rss
from gradproj.evaluation.state import restore, snapshot, trainable
from benchmarks.harness.step import objective_step, perturb_lora_b
from benchmarks.harness.tables import bench_markers, replace_between
from gradproj.core.atomic import write_atomic
from gradproj.plan import Architecture, Precision, lora_size, memory, stage_flops

CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"


def read_config(config: dict | str | Path) -> dict:
    """A config dict, a path to a config.json, or a name under benchmarks/configs/."""
    if isinstance(config, dict):
        return config
    path = Path(config)
    if not path.is_file():
        path = CONFIGS / f"{config}.json"
    return json.loads(path.read_text())


def config_model(config, *, dtype: str = "float32", targets=("q_proj", "v_proj"), r: int = 8,
                 attention: str = "sdpa", seed: int = 0, device: str = "cpu",
                 lora_b_std: float = 0.02):
    """The peft model (eval mode) of a random-weight model built from ``config``, LoRA r on
    ``targets`` (float32, as gradproj loads it) with B ~ N(0, lora_b_std²)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(read_config(config))
    cfg.pop("torch_dtype", None)
    torch.manual_seed(seed)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg),
                                                attn_implementation=attention,
                                                dtype=getattr(torch, dtype))
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets),
                                            lora_dropout=0.0, bias="none",
                                            task_type="CAUSAL_LM"))
    perturb_lora_b(model, lora_b_std, seed)
    model.to(device)
    model.eval()
    return model


def loaded_model(model, *, checkpointing: bool = False, max_tokens: int | None = None):
    """A LoadedModel around ``model`` (pad id 0, no real tokenizer) for FeatureComputer."""
    from gradproj.core.model import LoadedModel, ModelSettings

    device = next(model.parameters()).device
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    dtype = next((names[p.dtype] for p in model.parameters()
                  if not p.requires_grad and p.dtype in names), "float32")
    settings = ModelSettings(model="random-init", device=str(device), dtype=dtype,
                             grad_checkpointing=checkpointing, max_tokens=max_tokens)
    return LoadedModel(model=model, tokenizer=SimpleNamespace(pad_token_id=0), settings=settings,
                       base_fingerprint="random-init")


def random_pairs(n: int, tokens: int, vocab: int, seed: int = 0,
                 shorter_by: int = 8) -> list[TokenizedPair]:
    """``n`` pairs of random ids whose longer row (prompt + chosen) has exactly ``tokens``
    tokens: prompt ⌊tokens/2⌋, the rejected response ``shorter_by`` tokens shorter (so the
    batch is padded, as real pairs are)."""
    g = torch.Generator().manual_seed(seed)

    def ids(m):
        return tuple(int(v) for v in torch.randint(3, vocab, (m,), generator=g))

    prompt = tokens // 2
    chosen = tokens - prompt
    return [TokenizedPair(f"pair-{i}", ids(prompt), ids(chosen),
                          ids(max(1, chosen - shorter_by))) for i in range(n)]


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers (each storage once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def torch_peak(fn) -> tuple[int, object]:
    """(peak bytes held in allocations made during ``fn()``, its result): the profiler's
    allocation and free records summed in time order (CPU allocations of this thread, which is
    where CPU autograd runs)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    held = peak = 0
    for _, size in sorted(events):
        held += size
        peak = max(peak, held)
    return peak, result


def rss_peak(fn) -> tuple[int, int, object]:
    """(resident bytes before, VmHWM during ``fn()`` after a reset, its result); the freed heap
    is given back first so that the reset starts from what is live."""
    release_heap()
    before = proc_status(("VmRSS",)).get("VmRSS", 0)
    reset_peak_rss()
    result = fn()
    return before, proc_status(("VmHWM",)).get("VmHWM", 0), result


class Stages:
    """The two things compared, on one model and one batch: a DPO training step (reference
    forward, forward, backward, AdamW; adapter restored afterwards) and the store build of
    the batch (per-pair gradients, one backward, projection to k)."""

    def __init__(self, model, pairs: list[TokenizedPair], *, checkpointing: bool, k: int = 8192,
                 objective: Objective = DPO(0.1), lr: float = 1e-4):
        from gradproj.store.build import FeatureComputer, StoreSettings

        self.model, self.pairs, self.objective = model, pairs, objective
        self.checkpointing = checkpointing
        self.loaded = loaded_model(model, checkpointing=checkpointing)
        self.batch = collate(pairs, 0).to(self.loaded.device)
        self.saved = snapshot(model)
        self.opt = torch.optim.AdamW(list(trainable(model).values()), lr=lr)
        self.computer = FeatureComputer(self.loaded, StoreSettings(
            proj_dim=k, batch_size=len(pairs), proj_batch=len(pairs)), objective)

    def train(self):
        from gradproj.core.model import checkpointed

        with checkpointed(self.model, self.checkpointing):
            objective_step(self.model, self.batch, self.objective, self.opt)
        restore(self.model, self.saved)
        self.opt.state.clear()

    def build(self):
        return self.computer.features(self.pairs)

    def close(self):
        self.computer.close()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure_stage(stages: Stages, name: str, how: str) -> dict:
    """Seconds and peak bytes of one run of ``name`` (train or build); ``how``: ``rss``
    (VmHWM; CPU only), ``torch`` (profiler; CPU) or ``cuda`` (max_memory_allocated)."""
    fn = getattr(stages, name)
    device = stages.loaded.device
    if how == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    _sync(device)
    t0 = time.perf_counter()
    if how == "torch":
        peak, _ = torch_peak(fn)
        out = {"peak_bytes": peak + model_bytes(stages.model)}
    elif how == "rss":
        before, hwm, _ = rss_peak(fn)
        out = {"peak_bytes": hwm, "rss_before": before}
    else:
        fn()
        out = {"peak_bytes": torch.cuda.max_memory_allocated(), "allocated_before": base}
    _sync(device)
    out["seconds"] = time.perf_counter() - t0
    return out


def compare(config, tokens: int, *, pairs: int = 1, dtype: str = "float32",
            checkpointing: bool = True, repeats: int = 1, warmup: int = 0, how: str = "rss",
            targets=("q_proj", "v_proj"), r: int = 8, k: int = 8192, device: str = "cpu",
            quantized: str | None = None, log=print) -> dict:
    """Training step and store build on the same batch of ``pairs`` pairs of ``tokens``
    tokens a row, ``warmup`` untimed then ``repeats`` timed runs each (alternating, the first
    stage swapped every repeat): median seconds, pairs/s, peak bytes, FLOP rate, and the plan's
    estimate of each peak (tensors; ``runtime_bytes`` is what the process held besides the
    weights before the stage, for an RSS measurement)."""
    cfg = read_config(config)
    arch = Architecture.from_config(cfg)
    model = config_model(cfg, dtype=dtype, targets=targets, r=r, device=device) \
        if quantized is None else quantized_model(cfg, quantized, targets=targets, r=r,
                                                  checkpointing=checkpointing)
    stages = Stages(model, random_pairs(pairs, tokens, arch.vocab), checkpointing=checkpointing,
                    k=k)
    runs: dict[str, list[dict]] = {"train": [], "build": []}
    weights = model_bytes(model)
    try:
        for _ in range(warmup):
            stages.train()
            stages.build()
        for rep in range(repeats):
            for name in (("train", "build") if rep % 2 == 0 else ("build", "train")):
                runs[name].append(measure_stage(stages, name, how))
                log(f"  {name:5s} T={tokens} repeat {rep + 1}/{repeats}: "
                    f"{runs[name][-1]['seconds']:.1f} s, peak "
                    f"{runs[name][-1]['peak_bytes'] / 2**30:.2f} GiB")
        projector = stages.computer.projector
        proj = {n: projection_seconds(projector, n, stages.loaded.device)
                for n in (pairs, PROJ_BATCH)}
    finally:
        stages.close()
    precision = Precision(dtype if quantized is None else "bfloat16", quantized or "full",
                          checkpointing)
    out = {"arch": Path(config).name.removesuffix(".json")
           if isinstance(config, (str, Path)) else "config",
           "tokens": tokens, "pairs": pairs, "dtype": dtype if quantized is None else "bfloat16",
           "checkpointing": checkpointing, "base": quantized or "full", "how": how,
           "seconds": {n: [x["seconds"] for x in rs] for n, rs in runs.items()}}
    for name, results in runs.items():
        seconds = median([x["seconds"] for x in results])
        flops = stage_flops(arch, name, [(2 * pairs, tokens)], checkpointing=checkpointing,
                            P=lora_size(arch, targets, r), k=k)
        out[name] = {"seconds": seconds, "pairs_per_s": pairs / seconds,
                     "flops_per_s": flops / seconds,
                     "peak_bytes": max(x["peak_bytes"] for x in results),
                     "runtime_bytes": min(x["rss_before"] for x in results) - weights
                     if how == "rss" else 0,
                     "plan_bytes": memory(arch, name, precision, pairs=pairs, tokens=tokens,
                                          targets=targets, r=r, k=k, proj_batch=pairs,
                                          response_tokens=tokens - tokens // 2).peak}
    amortize(out, proj[pairs], proj[PROJ_BATCH])
    del stages, model
    release_heap()
    return out


PROJ_BATCH = 64
"""A store build projects the gradients of every 64 pairs at once (StoreSettings.proj_batch)."""


def projection_seconds(projector, rows: int, device, repeats: int = 3) -> float:
    """Median seconds of projecting ``rows`` random gradients with ``projector`` (after one
    warm-up), result brought to the host as FeatureComputer does."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = {n: torch.randn(rows, numel, generator=g).to(device) for n, numel in projector.layout}
    projector.project(x).float().cpu()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        projector.project(x).float().cpu()
        times.append(time.perf_counter() - t0)
    return median(times)


def amortize(result: dict, proj_batch_of_pairs: float, proj_64: float) -> dict:
    """The build as a store build runs it: the measured build of one batch projected that
    batch alone (generating R for a handful of rows); a build projects 64 pairs per call, so
    its per-batch cost is build − projection(B rows) + B·projection(64 rows)/64. Sets the
    build's ``seconds_amortized`` / ``pairs_per_s_amortized`` / ``flops_per_s`` and the two
    ratios (speed on the amortized build; ``build_over_train_speed_raw`` on the measured one)."""
    b, pairs = result["build"], result["pairs"]
    b["projection_seconds"] = {str(pairs): proj_batch_of_pairs, str(PROJ_BATCH): proj_64}
    b["seconds_amortized"] = b["seconds"] - proj_batch_of_pairs + pairs * proj_64 / PROJ_BATCH
    b["pairs_per_s_amortized"] = pairs / b["seconds_amortized"]
    b["flops_per_s_measured"] = b.get("flops_per_s_measured", b["flops_per_s"])
    b["flops_per_s"] = b["flops_per_s_measured"] * b["seconds"] / b["seconds_amortized"]
    t = result["train"]
    result["build_over_train_memory"] = b["peak_bytes"] / t["peak_bytes"]
    result["build_over_train_speed"] = b["pairs_per_s_amortized"] / t["pairs_per_s"]
    result["build_over_train_speed_raw"] = b["pairs_per_s"] / t["pairs_per_s"]
    return result


def quantized_model(config, bits: str, *, targets=("q_proj", "v_proj"), r: int = 8,
                    seed: int = 0, checkpointing: bool = True):
    """A random-weight model of ``config`` loaded by gradproj.core.model.load_model with
    ``--load-in-4bit`` / ``--load-in-8bit`` (``bits``: '4bit' or '8bit'; bfloat16 compute) on
    CUDA, LoRA on ``targets``: the random weights (and a character tokenizer) are saved to a
    temporary folder first (in /dev/shm where there is one), since bitsandbytes quantizes in
    from_pretrained."""
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM

    from gradproj.core.model import LoraSettings, ModelSettings, load_model
    from benchmarks.harness.tiny import char_tokenizer

    cfg = dict(read_config(config))
    cfg.pop("torch_dtype", None)
    torch.manual_seed(seed)
    import shutil

    need = 3 * 2 * Architecture.from_config(cfg).parameters()   # bf16 weights, with room
    shm = "/dev/shm" if Path("/dev/shm").is_dir() and shutil.disk_usage(
        "/dev/shm").free > need else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        with torch.device("cuda"):
            base = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg),
                                                    dtype=torch.bfloat16)
        base.save_pretrained(tmp)
        char_tokenizer().save_pretrained(tmp)
        del base
        torch.cuda.empty_cache()
        loaded = load_model(ModelSettings(
            model=tmp, device="cuda", dtype="bfloat16", attn_implementation="sdpa",
            lora=LoraSettings(r=r, alpha=2.0 * r, targets=tuple(targets)),
            grad_checkpointing=checkpointing, **{f"load_in_{bits}": True}))
    perturb_lora_b(loaded.model, 0.02, seed)
    loaded.model.eval()
    return loaded.model


# ------------------------------------------------------------------------------ report

ULTRAFEEDBACK_PAIRS = 61135
"""UltraFeedback-binarized train_prefs: the paper's training set."""
PAPER = "the paper: IF (LESS-style) takes about 10 hours on Llama-3.2-1B"


def key(result: dict) -> tuple:
    """What identifies a measurement within a machine's runs."""
    return (result["arch"], result["tokens"], result["pairs"], result["dtype"],
            result["checkpointing"], result["base"])


def save(path, machine: str, info: dict, results: list[dict], throughput=None) -> dict:
    """Merge ``results`` into the JSON at ``path`` under ``runs[machine]`` (replacing equal
    keys) and record, per stage, the FLOP rate of the largest-token run with the same dtype,
    base and checkpointing as the last result (what ``gradproj plan`` scales time by) in
    ``throughput`` (default: ``path`` itself; the package's table is
    gradproj.plan.THROUGHPUT_FILE)."""
    from gradproj.plan import write_throughput

    path = Path(path)
    data = _read_json(path)
    entry = data.setdefault("runs", {}).setdefault(machine, {"results": []})
    entry["machine"] = info
    mine = {key(r) for r in results}
    entry["results"] = [r for r in entry["results"] if key(r) not in mine] + results
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    last = results[-1]
    same = [r for r in entry["results"] if (r["dtype"], r["base"], r["checkpointing"]) ==
            (last["dtype"], last["base"], last["checkpointing"])]
    ref = max(same, key=lambda r: (r["tokens"], r["arch"]))
    for stage in ("train", "build"):
        write_throughput(throughput or path, machine, stage, {
            "flops_per_s": ref[stage]["flops_per_s"], "arch": ref["arch"],
            "tokens": ref["tokens"], "pairs": ref["pairs"], "dtype": ref["dtype"],
            "base": ref["base"], "checkpointing": ref["checkpointing"],
            "commit": info.get("commit"), "date": info.get("date")})
    return data


def _read_json(path: Path) -> dict:
    """The results JSON at ``path`` ({} when there is none); a file that does not parse is
    refused, never silently replaced (it holds other machines' runs)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); move it aside to start anew") from None


def hours(result: dict, stage: str, pairs: int = ULTRAFEEDBACK_PAIRS) -> float:
    """Hours for ``pairs`` pairs at the measured pairs/s of ``stage`` (one device)."""
    rate = result[stage].get("pairs_per_s_amortized", result[stage]["pairs_per_s"])
    return pairs / rate / 3600


def markdown(results: list[dict]) -> str:
    """The table bench_scale prints and docs/results.md holds."""
    head = ("| architecture | T | pairs | weights | ckpt | train pairs/s | build pairs/s "
            "(measured; projection per 64 pairs) | build/train speed | train peak GiB | "
            "build peak GiB | build/train memory | plan train / build GiB | "
            "UltraFeedback 61k: build h | train epoch h |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        base = r["dtype"] + ("" if r["base"] == "full" else f" + {r['base']}")
        extra = r["train"].get("runtime_bytes", 0)
        lines.append(
            f"| {r['arch']} | {r['tokens']} | {r['pairs']} | {base} | "
            f"{'on' if r['checkpointing'] else 'off'} | {r['train']['pairs_per_s']:.4g} | "
            f"{r['build']['pairs_per_s']:.4g}; {r['build']['pairs_per_s_amortized']:.4g} | "
            f"{r['build_over_train_speed']:.2f} | "
            f"{r['train']['peak_bytes'] / 2**30:.2f} | {r['build']['peak_bytes'] / 2**30:.2f} | "
            f"{r['build_over_train_memory']:.2f} | "
            f"{(r['train']['plan_bytes'] + extra) / 2**30:.2f} / "
            f"{(r['build']['plan_bytes'] + extra) / 2**30:.2f} | {hours(r, 'build'):.3g} | "
            f"{hours(r, 'train'):.3g} |")
    return "\n".join(lines)


def plot_memory(results: list[dict], path) -> None:
    """Peak memory against T, one line per (architecture, weights, stage), the plan's
    estimate dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict]] = {}
    for r in results:
        series.setdefault((r["arch"], r["dtype"], r["base"], r["checkpointing"]), []).append(r)
    for (arch, dtype, base, ckpt), rs in series.items():
        rs = sorted(rs, key=lambda r: r["tokens"])
        t = [r["tokens"] for r in rs]
        label = f"{arch} {dtype}{'' if base == 'full' else ' ' + base}{' ckpt' if ckpt else ''}"
        for stage, marker in (("train", "o"), ("build", "s")):
            extra = [r[stage].get("runtime_bytes", 0) for r in rs]
            line, = ax.plot(t, [r[stage]["peak_bytes"] / 2**30 for r in rs], marker=marker,
                            label=f"{label}: {stage}")
            ax.plot(t, [(r[stage]["plan_bytes"] + e) / 2**30 for r, e in zip(rs, extra)],
                    ls="--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("T, tokens a row (a batch of 2 rows a pair)")
    ax.set_ylabel("peak memory, GiB (dashed: gradproj plan)")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep(archs, tokens, *, out, machine: str, info: dict, budget_s: float = float("inf"),
          log=print, **kw) -> list[dict]:
    """:func:`compare` for every architecture × T (skipping what starts after ``budget_s``),
    each result merged into ``out`` as it comes (:func:`save`). On CUDA a failed run (out of
    memory, no bitsandbytes) is reported and the sweep goes on; on a CPU it raises."""
    start, results = time.perf_counter(), []
    for arch in archs:
        for t in tokens:
            if time.perf_counter() - start > budget_s:
                log(f"skipped {arch} T={t}: time budget ({budget_s:.0f} s) spent")
                continue
            log(f"{arch} T={t} {kw}")
            try:
                results.append(compare(arch, t, log=log, **kw))
            except Exception as err:   # noqa: BLE001 - on a lent GPU: report, keep the rest
                if not str(kw.get("device", "cpu")).startswith("cuda"):
                    raise
                log(f"  {arch} T={t}: {type(err).__name__}: {str(err)[:200]}")
                continue
            save(out, machine, info, results)
            log(markdown(results[-1:]).splitlines()[-1])
    return results


def load_runs(path, machine: str) -> list[dict]:
    """Every result recorded in ``path`` for ``machine`` ([] if none)."""
    return _read_json(Path(path)).get("runs", {}).get(machine, {}).get("results", [])


PLAN_SIZES = (  # hidden, intermediate, layers, heads, kv heads, vocab, tokens, pairs, dtype, ckpt
    (128, 352, 4, 4, 2, 4000, 128, 2, "float32", False),
    (256, 704, 4, 8, 2, 8000, 256, 2, "float32", False),
    (256, 704, 8, 8, 2, 1000, 384, 2, "float32", True),
    (384, 1024, 6, 6, 6, 2000, 256, 1, "bfloat16", True),
)
"""Llama-shaped sizes at which `gradproj plan`'s peak estimate is checked against torch's
allocations (tests/test_plan.py; bench_scale --plan-check): both precisions, with and without
checkpointing, one and two pairs."""


def size_config(size: tuple) -> dict:
    """The Llama config.json of a :data:`PLAN_SIZES` entry."""
    h, i, layers, heads, kv, vocab = size[:6]
    return dict(model_type="llama", vocab_size=vocab, hidden_size=h, intermediate_size=i,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                max_position_embeddings=1024, tie_word_embeddings=False)


def check_plan(size: tuple, k: int = 256) -> dict:
    """:func:`compare` at one :data:`PLAN_SIZES` entry, peaks from torch's allocations: per
    stage the measured and planned peak bytes and the plan's relative error."""
    tokens, pairs, dtype, ckpt = size[6:]
    out = compare(size_config(size), tokens, pairs=pairs, dtype=dtype, checkpointing=ckpt,
                  how="torch", k=k, log=lambda *_: None)
    return {"size": "h{}-i{}-L{}-heads{}/{}-V{}".format(*size[:6]), "tokens": tokens,
            "pairs": pairs, "dtype": dtype, "checkpointing": ckpt,
            **{stage: _versus(out[stage]["peak_bytes"], out[stage]["plan_bytes"])
               for stage in ("train", "build")}}


def _versus(measured: int, planned: int) -> dict:
    """A plan-against-measured cell: both peaks and the plan's relative error."""
    return {"measured": measured, "plan": planned, "error": (planned - measured) / measured}


def plan_rows(results: list[dict]) -> list[dict]:
    """:func:`check_plan`-shaped rows from bench_scale results: the plan against VmHWM (plus
    what the process held besides the weights before the stage) on a CPU, against
    max_memory_allocated on CUDA."""
    rows = []
    for r in results:
        base = "" if r.get("base", "full") == "full" else f" + {r['base']}"
        row = {"size": r["arch"], "tokens": r["tokens"], "pairs": r["pairs"],
               "dtype": r["dtype"] + base, "checkpointing": r["checkpointing"], "how": r["how"]}
        for stage in ("train", "build"):
            row[stage] = _versus(r[stage]["peak_bytes"],
                                 r[stage]["plan_bytes"] + r[stage].get("runtime_bytes", 0))
        rows.append(row)
    return rows


def plan_markdown(rows: list[dict]) -> str:
    """Planned against measured peak memory, one row per size and stage."""
    head = ("| size | T | pairs | dtype | ckpt | measured by | stage | measured MiB | plan MiB | "
            "plan error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        how = {"rss": "VmHWM", "cuda": "max_memory_allocated"}.get(r.get("how", "torch"),
                                                                    "torch allocations")
        for stage in ("train", "build"):
            s = r[stage]
            lines.append(f"| {r['size']} | {r['tokens']} | {r['pairs']} | {r['dtype']} | "
                         f"{'on' if r['checkpointing'] else 'off'} | {how} | {stage} | "
                         f"{s['measured'] / 2**20:.1f} | {s['plan'] / 2**20:.1f} | "
                         f"{100 * s['error']:+.1f}% |")
    return "\n".join(lines)


def write_results(results_md, body: str) -> bool:
    """Replace what stands between the bench_scale markers of ``results_md`` with ``body``;
    False (nothing written) when the markers are missing."""
    return replace_between(results_md, *bench_markers("bench_scale"), body)


def save_plan_check(path, machine: str, rows: list[dict]) -> None:
    """Record :func:`check_plan` rows under ``plan_check[machine]`` of the JSON at ``path``."""
    path = Path(path)
    data = _read_json(path)
    data.setdefault("plan_check", {})[machine] = rows
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def report(path, machine: str, plot_name: str = "bench_scale.png") -> str:
    """docs/results.md's bench_scale section for every machine recorded in ``path``: the build
    against training table, the memory plot and the plan against measured peaks."""
    data = _read_json(Path(path))
    parts = []
    for name, entry in sorted(data.get("runs", {}).items()):
        info = entry.get("machine", {})
        parts += [f"**{name}** (commit {info.get('commit', '?')}, {info.get('date', '?')}; "
                  f"load average at start {info.get('loadavg_at_start', '?')}). "
                  f"For comparison, {PAPER}; "
                  f"hours are for UltraFeedback's {ULTRAFEEDBACK_PAIRS:,} pairs on one device.",
                  "", markdown(entry["results"]), ""]
    parts += [f"![peak memory against T]({plot_name})", "",
              "`gradproj plan` against the measured peak (the error is plan − measured over "
              "measured; torch allocations plus the weights, or the process's VmHWM with what "
              "it held before the stage added to the plan):", ""]
    rows = list(data.get("plan_check", {}).get(machine, []))
    for entry in data.get("runs", {}).values():
        rows += plan_rows(entry["results"])
    parts.append(plan_markdown(rows))
    return "\n".join(parts)
