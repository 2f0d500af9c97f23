"""What a run will cost before it runs: parameters, LoRA size, store size, peak memory, time.

Everything here is arithmetic on the architecture (a config: no weights are loaded) and on the
lengths of the data. Notation: L layers, H hidden, I intermediate, n_h / n_kv attention / key-
value heads of d dimensions, V vocabulary, r LoRA rank; a batch of B pairs is R = 2B rows of T
tokens (padded to its longest row); b bytes per value of the compute dtype (4 float32, 2 bf16).

**Parameters** (the Llama family: llama, mistral, qwen2; biases where the config has them)

    N = V·H·(1 if tied else 2) + H + L·(H·n_h·d + 2·H·n_kv·d + n_h·d·H + 3·H·I + 2·H)

**LoRA** on the modules m of every layer: P = L · Σ_m r·(d_in(m) + d_out(m)).

**Store**: rows · (2k bytes of float16 features + one row record, ``ROW_DTYPE``).

**Peak memory of one step** (tensors; SDPA attention with a padding mask, LoRA in float32 as
peft keeps it). Autograd keeps, per token and layer (S, bytes):

    S = 2·(4H + 4)                 the two RMSNorms' float32 inputs (and 1/rms)
      + b·n_h·d                    q after rotary
      + 2·b·n_h·d                  k, v repeated to n_h heads (GQA with a mask: repeat_kv)
      + b·n_h·d + 4·n_h            attention output and log-sum-exp
      + 3·b·I                      gate output, SiLU(gate), up output
      + LoRA inputs                b·d_in per input group with a LoRA module (q/k/v share
                                   theirs; o_proj, down_proj inputs) — 4·d_in per module when
                                   b ≠ 4 (peft casts the input to the float32 adapter)
      + 4r per LoRA module         lora_A outputs
    M = b·T² per row and layer      the additive float mask SDPA makes from the padding mask
    G = 16·V per token              log-softmax over [R, T, V] in float32: its input (kept) and
                                   three float32 temporaries of its backward

    train (no checkpointing)  W + 16P + R·T·(L·S + 4H) + R·L·M + R·T·G
    train (checkpointing)     W + 16P + R·T·(L·b·H + 4H) + max(R·T·G, R·T·S + R·M + R·T·X)
    X = 4·b·I                      one layer's backward temporaries (matters only when V is small)
    build                     train − 12P (no optimizer state, no .grad) + 4·R·P (per-row
                              gradients) + 4·P·proj_batch (features waiting for projection)
    projection (after the pass) W + 8·P·proj_batch + 5.25·k·min(4096, largest factor) bytes

W = b·N; with a 4-bit base (bitsandbytes NF4, double quantization) each weight of a layer's
linears takes 0.5 + 1/64 + 4/64² ≈ 0.516 bytes, 8-bit 1 byte + 4 per output row; embeddings,
norms and an untied lm_head stay in bf16. The process adds its runtime
(CPU: the Python interpreter and libraries, about 0.5 GiB; CUDA: the context, about 0.5 GiB).

**Time**: FLOPs of a forward pass over a row of T tokens F = 2·N_mm·T + 4·L·n_h·d·T², N_mm the
weights of matrix products (lm_head included); a frozen base's backward costs F_bwd = 2·N_mm·T
+ 8·L·n_h·d·T² (input gradients only). A training step or a store build does a reference
forward, a forward and a backward (3 passes; a 4th with checkpointing); the build adds
2·P·k per pair for the projection. Seconds = FLOPs / the FLOP rate measured on this machine by
``benchmarks/bench_scale.py`` (recorded in gradproj/plan/throughput.json).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gradproj.core.errors import BadInput
from gradproj.core.tokens import budget_groups
from gradproj.store.manifest import ROW_DTYPE

FAMILY = ("llama", "mistral", "qwen2")
ATTN_INPUT, O_INPUT, MLP_INPUT, DOWN_INPUT = "attn", "o", "mlp", "down"
MODULE_GROUP = {"q_proj": ATTN_INPUT, "k_proj": ATTN_INPUT, "v_proj": ATTN_INPUT,
                "o_proj": O_INPUT, "gate_proj": MLP_INPUT, "up_proj": MLP_INPUT,
                "down_proj": DOWN_INPUT}
BASES = {"full": None, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}
"""Bytes per quantized weight of a layer's linears (None: the compute dtype's): NF4 with
double quantization (an 8-bit scale per block of 64, a float32 one per 256 scales), as
gradproj.core.model loads it; int8 (plus a float32 scale per output row)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = {"cpu": 0.5 * 2**30, "cuda": 0.5 * 2**30}
UNIFORM_PROJECTION_BLOCK = 4096
THROUGHPUT_FILE = Path(__file__).with_name("throughput.json")
"""Package data: measured FLOP rates by machine (benchmarks/bench_scale.py, gpu_check) and the
published bfloat16 peaks and memory of common GPUs."""


@dataclass(frozen=True)
class Architecture:
    """The shapes of a Llama-family decoder (read from a config; no weights)."""

    model_type: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, cfg: dict, source: str = "config") -> Architecture:
        """From a config.json dict (``text_config`` of a multimodal config is not read)."""
        kind = cfg.get("model_type")
        if kind not in FAMILY:
            raise BadInput(f"{source}: plan knows the {', '.join(FAMILY)} architectures, "
                           f"got model_type {kind!r}")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            attention_bias = bool(cfg.get("attention_bias", False))
            return cls(kind, int(cfg["vocab_size"]), hidden, int(cfg["intermediate_size"]),
                       int(cfg["num_hidden_layers"]), heads,
                       int(cfg.get("num_key_value_heads") or heads),
                       int(cfg.get("head_dim") or hidden // heads),
                       bool(cfg.get("tie_word_embeddings", kind != "mistral")),
                       qkv_bias=kind == "qwen2" or attention_bias, o_bias=attention_bias,
                       mlp_bias=bool(cfg.get("mlp_bias", False)))
        except KeyError as err:
            raise BadInput(f"{source}: the config has no {err.args[0]}") from None

    def linears(self) -> dict[str, tuple[int, int]]:
        """(d_in, d_out) of each linear of one layer, by module name."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, \
            self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_linear_weights(self) -> int:
        """Σ d_in·d_out over one layer's linears (what 4-bit / 8-bit quantize)."""
        return sum(a * b for a, b in self.linears().values())

    def parameters(self) -> int:
        """N, the formula of the module docstring."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = (q + 2 * kv if self.qkv_bias else 0) + (self.hidden if self.o_bias else 0) + (
            2 * self.intermediate + self.hidden if self.mlp_bias else 0)
        layer = self.layer_linear_weights() + 2 * self.hidden + bias
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden + \
            self.layers * layer

    def matmul_weights(self) -> int:
        """N_mm: weights used in matrix products per token (layers' linears and lm_head)."""
        return self.layers * self.layer_linear_weights() + self.vocab * self.hidden

    def describe(self) -> str:
        return (f"{self.model_type}: L={self.layers} H={self.hidden} I={self.intermediate} "
                f"heads {self.heads}/{self.kv_heads}×{self.head_dim} V={self.vocab}"
                f"{' tied' if self.tied else ''}")


def lora_factors(arch: Architecture, targets: Sequence[str], r: int) -> list[tuple[int, int]]:
    """(d_in, d_out) of every LoRA factor (A: d_in → r, B: r → d_out) of one layer."""
    shapes = arch.linears()
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise BadInput(f"--lora-targets: plan knows {', '.join(shapes)}, got {', '.join(unknown)}")
    out = []
    for name in sorted(set(targets), key=list(shapes).index):
        d_in, d_out = shapes[name]
        out += [(d_in, r), (r, d_out)]
    return out


def lora_size(arch: Architecture, targets: Sequence[str], r: int) -> int:
    """P = L · Σ_m r·(d_in(m) + d_out(m))."""
    return arch.layers * sum(a * b for a, b in lora_factors(arch, targets, r))


def store_bytes(rows: int, k: int) -> int:
    """Bytes of a store of ``rows`` rows at dimension k: float16 features + row records."""
    return rows * (2 * k + ROW_DTYPE.itemsize)


# ------------------------------------------------------------------------------ memory

@dataclass(frozen=True)
class Precision:
    """How the base model is held: compute dtype, quantized base, activation checkpointing."""

    dtype: str = "float32"
    base: str = "full"
    checkpointing: bool = False
    attention: str = "sdpa"

    def label(self) -> str:
        base = "" if self.base == "full" else f" + {self.base} base"
        return f"{self.dtype}{base}"


def weight_bytes(arch: Architecture, p: Precision) -> float:
    """W: b·N, or quantized layer linears plus the rest in the compute dtype."""
    b, per = DTYPE_BYTES[p.dtype], BASES[p.base]
    n = arch.parameters()
    if per is None:
        return b * n
    quantized = arch.layers * arch.layer_linear_weights()
    scales = 4 * arch.layers * sum(d for _, d in arch.linears().values()) if p.base == "8bit" \
        else 0
    return per * quantized + scales + b * (n - quantized)


def saved_per_token_layer(arch: Architecture, targets: Sequence[str], r: int, p: Precision,
                          tokens: int) -> float:
    """S, bytes autograd keeps per token and layer (the module docstring's terms)."""
    b = DTYPE_BYTES[p.dtype]
    q = arch.heads * arch.head_dim
    kv = q if arch.kv_heads < arch.heads else arch.kv_heads * arch.head_dim
    s = 2 * (4 * arch.hidden + 4) + b * q + 2 * b * kv + b * q + 4 * arch.heads \
        + 3 * b * arch.intermediate
    if p.attention == "eager":   # softmax output (float32) and its cast to the compute dtype
        s += arch.heads * tokens * (4 + (b if b != 4 else 0))
    d_in = {ATTN_INPUT: arch.hidden, O_INPUT: q, MLP_INPUT: arch.hidden,
            DOWN_INPUT: arch.intermediate}
    for group, width in d_in.items():
        mods = [m for m in targets if MODULE_GROUP[m] == group]
        if mods:
            s += width * (b if b == 4 else 4 * len(mods))
    return s + 4 * r * len(set(targets))


@dataclass
class Memory:
    """Peak bytes of one stage and the terms it adds up."""

    stage: str
    precision: Precision
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return sum(self.terms.values())


def memory(arch: Architecture, stage: str, p: Precision, *, pairs: int, tokens: int,
           targets: Sequence[str], r: int, k: int = 8192, proj_batch: int = 64,
           response_tokens: int | None = None) -> Memory:
    """Peak tensor bytes of a training step (``stage='train'``) or of the store build's gradient
    pass and projection (``'build'``) on ``pairs`` pairs of ``tokens`` tokens a row, of which
    ``response_tokens`` (default: all, an upper bound) are response tokens: the log-probs
    project only the positions that predict a response token onto the vocabulary."""
    if stage not in ("train", "build"):
        raise BadInput(f"stage must be train or build, got {stage!r}")
    b, rows, L = DTYPE_BYTES[p.dtype], 2 * pairs, arch.layers
    P = lora_size(arch, targets, r)
    s = saved_per_token_layer(arch, targets, r, p, tokens)
    mask = b * tokens ** 2 if p.attention == "sdpa" else 0
    logit_tokens = tokens if response_tokens is None else response_tokens   # per row
    out = Memory(stage, p)
    out.terms["weights"] = weight_bytes(arch, p)
    out.terms["lora"] = 16 * P if stage == "train" else 4 * P
    if p.checkpointing:
        out.terms["layer inputs"] = rows * tokens * (L * b * arch.hidden + 4 * arch.hidden)
        layer = rows * tokens * (s + 4 * b * arch.intermediate) + rows * mask
        out.terms["logits or one layer"] = max(rows * logit_tokens * 16 * arch.vocab, layer)
    else:
        out.terms["activations"] = rows * tokens * (L * s + 4 * arch.hidden) + rows * L * mask
        if p.attention == "eager":
            out.terms["activations"] += rows * tokens ** 2 * b
        out.terms["logits"] = rows * logit_tokens * 16 * arch.vocab
    if stage == "build":
        out.terms["per-row gradients"] = 4 * rows * P
        out.terms["features waiting"] = 4 * P * proj_batch
        largest = max(a * c for a, c in lora_factors(arch, targets, r))
        projection = 4 * P + 8 * P * proj_batch + 5.25 * k * min(UNIFORM_PROJECTION_BLOCK,
                                                                   largest)
        gradient_pass = sum(v for n, v in out.terms.items() if n != "weights")
        if projection > gradient_pass:   # the later phase is the peak: report it alone
            out.terms = {"weights": out.terms["weights"], "projection": projection}
    return out


# ------------------------------------------------------------------------------ time

def forward_flops(arch: Architecture, tokens: int) -> float:
    """F = 2·N_mm·T + 4·L·n_h·d·T² for one row of T tokens."""
    return 2 * arch.matmul_weights() * tokens + \
        4 * arch.layers * arch.heads * arch.head_dim * tokens ** 2


def stage_flops(arch: Architecture, stage: str, rows_tokens: Sequence[tuple[int, int]], *,
                checkpointing: bool, P: int = 0, k: int = 0) -> float:
    """FLOPs of ``stage`` over batches given as (rows, padded tokens): reference forward,
    forward, backward (F_bwd = F + 4·L·n_h·d·T²), one more forward when checkpointing; the
    build adds 2·P·k per pair for the projection."""
    total = 0.0
    for rows, t in rows_tokens:
        f = forward_flops(arch, t)
        attn = 4 * arch.layers * arch.heads * arch.head_dim * t ** 2
        total += rows * ((3 + checkpointing) * f + attn)
        if stage == "build":
            total += rows / 2 * 2 * P * k
    return total


def padded_batches(lengths: Sequence[int], batch_size: int,
                   max_tokens: int | None = None) -> list[tuple[int, int]]:
    """(rows, padded tokens) of each batch for pairs whose longer row has ``lengths`` tokens,
    batched as gradproj.core.tokens.token_batches does: in order by ``batch_size``, or, with
    ``max_tokens``, longest first and cut so that 2·B·T ≤ max_tokens."""
    if max_tokens is None:
        return [(2 * len(lengths[i:i + batch_size]), max(lengths[i:i + batch_size]))
                for i in range(0, len(lengths), batch_size)]
    return [(2 * len(g), lengths[g[0]]) for g in budget_groups(lengths, max_tokens, batch_size)]


def machine_key(device: str = "cpu") -> str:
    """This machine as throughput.json keys it: the GPU's name, or CPU model × cores."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ×{os.cpu_count()}"


def read_throughput(path: str | os.PathLike = THROUGHPUT_FILE) -> dict:
    """machine key → stage → record (``flops_per_s`` and how it was measured); {} if none."""
    try:
        return json.loads(Path(path).read_text()).get("machines", {})
    except (OSError, ValueError):
        return {}


def gpu_table(path: str | os.PathLike = THROUGHPUT_FILE) -> dict:
    """GPU key (``H100``, ``A100-80GB`` ...) → name, published bf16 peak, memory; plus
    ``assumed_efficiency``."""
    return json.loads(Path(path).read_text())["gpus"]


def write_throughput(path: str | os.PathLike, machine: str, stage: str, record: dict) -> None:
    """Record (replace) the measured rate of ``stage`` on ``machine``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("machines", {}).setdefault(machine, {})[stage] = record
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------ the plan

@dataclass
class Plan:
    """Everything ``gradproj plan`` prints."""

    source: str
    arch: Architecture
    targets: tuple[str, ...]
    r: int
    k: int
    pairs: int
    batch_size: int
    batches: list[tuple[int, int]]
    lengths_from: str
    chosen: Precision
    memory: list[tuple[Memory, Memory]]
    machine: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"

    @property
    def lora(self) -> int:
        return lora_size(self.arch, self.targets, self.r)

    @property
    def store(self) -> int:
        return store_bytes(self.pairs, self.k)

    @property
    def longest(self) -> int:
        return max(t for _, t in self.batches)


def make_plan(arch: Architecture, *, source: str, targets: Sequence[str], r: int, k: int,
              lengths: Sequence[int], lengths_from: str, batch_size: int,
              max_tokens: int | None = None, chosen: Precision = Precision(),
              proj_batch: int = 64, throughput: dict | None = None, machine: str | None = None,
              device: str = "cpu") -> Plan:
    """The plan for pairs whose longer rows have ``lengths`` tokens; memory at the largest
    batch (2·B·T), for float32, bf16 and a 4-bit base, with and without checkpointing."""
    batches = padded_batches(lengths, batch_size, max_tokens)
    rows, t = max(batches, key=lambda rt: (rt[0] * rt[1], rt[1]))
    precisions = [Precision(d, base, ck, chosen.attention) for d, base in (
        ("float32", "full"), ("bfloat16", "full"), ("bfloat16", "4bit")) for ck in (False, True)]
    if chosen not in precisions:
        precisions.append(chosen)
    table = [tuple(memory(arch, stage, p, pairs=rows // 2, tokens=t, targets=targets, r=r, k=k,
                          proj_batch=proj_batch) for stage in ("train", "build"))
             for p in precisions]
    plan = Plan(source, arch, tuple(targets), r, k, len(lengths), batch_size, batches,
                lengths_from, chosen, table, device=device)
    record = (throughput or {}).get(machine or "")
    if record:
        plan.machine = machine
        P = plan.lora
        for stage in ("train", "build"):
            rate = record.get(stage, {}).get("flops_per_s")
            if rate:
                plan.seconds[stage] = stage_flops(arch, stage, batches,
                                                  checkpointing=chosen.checkpointing, P=P,
                                                  k=k) / rate
    return plan


def duration(seconds: float) -> str:
    """Seconds as "12 s", "3.4 min" or "1.21 h" (the unit that keeps two or three digits)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def format_plan(plan: Plan) -> str:
    """The text ``gradproj plan`` prints."""
    a = plan.arch
    lines = [
        f"model      {plan.source} ({a.describe()})",
        f"parameters {a.parameters():,}",
        f"LoRA       r={plan.r} on {','.join(plan.targets)}: P = {plan.lora:,} "
        f"({4 * plan.lora / 2**20:.1f} MiB in float32)",
        f"data       {plan.pairs:,} pairs; longest row {plan.longest} tokens, "
        f"{sum(r * t for r, t in plan.batches) / (2 * plan.pairs):.0f} padded tokens a row on "
        f"average ({plan.lengths_from})",
        f"batches    {len(plan.batches):,} of up to {plan.batch_size} pairs; peak at "
        f"{max(r * t for r, t in plan.batches):,} tokens",
        f"store      {plan.pairs:,} rows × k={plan.k}: {plan.store / 2**30:.2f} GiB "
        f"(float16 features + {ROW_DTYPE.itemsize}-byte row records)",
        "",
        "peak memory per device (tensors; add the runtime, about 0.5 GiB on a CPU or for a "
        "CUDA context):",
        f"  {'weights':<26s} {'checkpointing':<14s} {'train step':>11s} {'store build':>12s}",
    ]
    for train, build in plan.memory:
        p = train.precision
        mark = "  ← these settings" if p == plan.chosen else ""
        lines.append(f"  {p.label():<26s} {'on' if p.checkpointing else 'off':<14s} "
                     f"{gib(train.peak):>11s} {gib(build.peak):>12s}{mark}")
    lines.append("")
    if plan.seconds:
        lines.append(f"expected time on {plan.machine} ({plan.chosen.label()}, checkpointing "
                     f"{'on' if plan.chosen.checkpointing else 'off'}, scaled by the FLOP rate measured "
                     "there, gradproj/plan/throughput.json):")
        for stage, label in (("build", "store build"), ("train", "one training epoch")):
            if stage in plan.seconds:
                lines.append(f"  {label:<20s} {duration(plan.seconds[stage]):>10s}")
    else:
        lines.append("expected time: no throughput recorded for this machine "
                     "(run benchmarks/bench_scale.py here)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ verdict

@dataclass
class Fit:
    """Whether one stage fits a GPU's memory at the chosen settings, and what would.

    ``peak``: bytes at the chosen settings (tensors + the CUDA runtime); ``advice``: (options,
    peak) of the settings that fit, least intrusive first — a token budget (fewer pairs a
    pass; a training step keeps its pairs by accumulating micro-batches), then checkpointing,
    then a 4-bit base, then a shorter --max-length."""

    stage: str
    fits: bool
    peak: float
    pairs: int
    tokens: int
    advice: list[tuple[str, float]] = field(default_factory=list)


def fit_verdict(arch: Architecture, *, gpu_bytes: float, chosen: Precision, pairs: int,
                tokens: int, targets: Sequence[str], r: int, k: int = 8192,
                proj_batch: int = 64) -> list[Fit]:
    """Per stage (training step, store build): does a pass of ``pairs`` pairs of ``tokens``
    tokens fit ``gpu_bytes`` (with the 0.5 GiB CUDA runtime), and if not, which settings do."""
    runtime = RUNTIME_BYTES["cuda"]

    def peak(stage, precision, b, t):
        return memory(arch, stage, precision, pairs=b, tokens=t, targets=targets, r=r, k=k,
                      proj_batch=proj_batch).peak + runtime

    options = [(chosen, "")]
    if not chosen.checkpointing:
        options.append((Precision(chosen.dtype, chosen.base, True, chosen.attention),
                        "--grad-checkpointing "))
    if chosen.base == "full":
        options.append((Precision("bfloat16", "4bit", True, chosen.attention),
                        "--load-in-4bit --grad-checkpointing "))
    out = []
    for stage in ("train", "build"):
        fit = Fit(stage, peak(stage, chosen, pairs, tokens) <= gpu_bytes,
                  peak(stage, chosen, pairs, tokens), pairs, tokens)
        if not fit.fits:
            for precision, flags in options:
                fitting = [b for b in range(pairs, 0, -1)
                           if peak(stage, precision, b, tokens) <= gpu_bytes]
                if not fitting:
                    continue
                b = fitting[0]
                budget = "" if b == pairs else f"--max-tokens {2 * b * tokens} "
                what = (f"{flags}{budget}".strip() + f" ({b} pair{'s' * (b > 1)} a pass"
                        + ("; the step keeps its pairs" if stage == "train" and b < pairs
                           else "") + ")")
                fit.advice.append((what, peak(stage, precision, b, tokens)))
            if not fit.advice:      # one pair does not fit in any precision: shorter rows
                precision, flags = options[-1]
                t = tokens
                while t > 16 and peak(stage, precision, 1, t) > gpu_bytes:
                    t = int(t * 0.9)
                if peak(stage, precision, 1, t) <= gpu_bytes:
                    fit.advice.append((f"{flags}--max-length {t} --max-tokens {2 * t} "
                                       "(1 pair a pass)", peak(stage, precision, 1, t)))
        out.append(fit)
    return out


def format_verdict(fits: list[Fit], gpu_gib: float, chosen: Precision) -> list[str]:
    """The lines ``gradproj plan --gpu-memory`` prints."""
    label = {"train": "training step", "build": "store build"}
    lines = [f"on a GPU with {gpu_gib:g} GiB ({chosen.label()}, checkpointing "
             f"{'on' if chosen.checkpointing else 'off'}; peaks include 0.5 GiB of CUDA runtime):"]
    for f in fits:
        at = f"{f.pairs} pair{'s' * (f.pairs > 1)} × {f.tokens} tokens a pass"
        if f.fits:
            lines.append(f"  {label[f.stage]:<14s} fits: {gib(f.peak)} at {at}")
            continue
        lines.append(f"  {label[f.stage]:<14s} does NOT fit: {gib(f.peak)} at {at}")
        if not f.advice:
            lines.append(f"  {'':<14s} nothing fits, not even one pair of 16 tokens on a "
                         "4-bit base")
        for what, need in f.advice:
            lines.append(f"  {'':<14s} fits with {what}: {gib(need)}")
    return lines


def gpu_seconds(arch: Architecture, batches: list[tuple[int, int]], gpu: dict,
                efficiency: float, *, checkpointing: bool, P: int, k: int) -> dict[str, float]:
    """Estimated seconds of the store build and one training epoch on a GPU: the FLOPs over
    its published bf16 peak × ``efficiency`` (an assumption until a device run measures it)."""
    rate = gpu["bf16_flops_per_s"] * efficiency
    return {stage: stage_flops(arch, stage, batches, checkpointing=checkpointing, P=P, k=k) / rate
            for stage in ("train", "build")}


# ------------------------------------------------------------------------------ inputs

def load_architecture(model: str, trust_remote_code: bool = False):
    """(Architecture, tokenizer or None) of a --model value: a config.json file, an HF folder,
    a .gguf file, ``smollm2``, or a hub id (only where the hub is reachable)."""
    from gradproj.core.model import SMOLLM2_ALIAS, embedded_gguf_path

    path = Path(model)
    if path.is_file() and path.suffix == ".json":
        try:
            return Architecture.from_config(json.loads(path.read_text()), model), None
        except ValueError as err:
            raise BadInput(f"{model}: not a JSON config ({err})") from None
    if model == SMOLLM2_ALIAS or model.endswith(".gguf"):
        gguf = embedded_gguf_path() if model == SMOLLM2_ALIAS else path
        if not gguf.is_file():
            raise BadInput(f"{model}: no such GGUF file")
        name, extra = str(gguf.parent), {"gguf_file": gguf.name}
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(f"{model}: not a model folder (no config.json)")
        return (Architecture.from_config(json.loads((path / "config.json").read_text()), model),
                _tokenizer(model, {}, trust_remote_code))
    else:
        name, extra = model, {}
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BadInput(f"cannot read the config of '{model}': {first}") from None
    return Architecture.from_config(cfg.to_dict(), model), _tokenizer(name, extra,
                                                                      trust_remote_code)


def _tokenizer(name: str, extra: dict, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError, TypeError):
        return None


def pair_lengths(pairs, tokenizer, max_length: int) -> tuple[list[int], str]:
    """(tokens of each pair's longer row, how they were found): tokenized with the model's
    chat template when there is a tokenizer, else estimated at 4 characters a token; at most
    ``max_length``."""
    if tokenizer is not None:
        from gradproj.core.tokens import longest_row, tokenize_pairs

        tok = tokenize_pairs(pairs, tokenizer, max_length)
        return [longest_row(p) for p in tok.pairs], "tokenized with the model's tokenizer"
    def chars(messages) -> int:
        return sum(len(str(m.get("content", ""))) for m in messages)

    out = [min(max_length, math.ceil((chars(p.prompt) + max(chars(p.chosen), chars(p.rejected)))
                                     / 4)) for p in pairs]
    return out, "estimated at 4 characters a token: the model has no tokenizer here"
