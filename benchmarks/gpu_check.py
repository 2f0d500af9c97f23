"""Device check of the fused Triton projection (gradproj.projection.kernels), on one CUDA GPU.

    python3 -m benchmarks.gpu_check       # (benchmarks/gpu_check.sh runs this)

(a) correctness: the kernel against the torch reference (``HashProjector``) on fresh random
    inputs at several shapes — on the same GPU, and on the CPU for the first 64 rows of R (a
    row of R does not depend on k). Relative errors ‖out − ref‖/‖ref‖ with their bounds.
(b) speed, B pairs × P gradient entries → k: the kernel (both kinds, both precisions, a few
    tile configs) against a cuBLAS matmul with a prebuilt R of the same shape (the limit: R
    read once from memory), the torch reference HashProjector, and TRAK's BasicProjector
    on the GPU (when the traker package is importable).
(c) end to end: a store's features for 500 pairs on a randomly initialised model of
    SmolLM2-135M's exact architecture (the embedded GGUF is not needed: same cost per pair),
    LoRA r=8 on q_proj,v_proj, k = 8192, with the torch reference projector and with the
    kernel, against a plain DPO training step (policy forward+backward, reference forward,
    AdamW step) on the same batches: pairs/s both ways and the projection's share.

Prints one table last; writes $OUT/gpu_check.json when $OUT is set. Sized for about 2 minutes
on an H100 (later parts are skipped, and say so, if the time runs out: --budget-s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from benchmarks.harness.tables import markdown_table  # noqa: E402
from benchmarks.harness.tiny import random_smollm2, random_token_pairs, smollm2_lora_layout  # noqa: E402
from gradproj.projection.base import HashProjector  # noqa: E402
from gradproj.projection.spec import ProjectorSpec  # noqa: E402

DEVICE = "cuda"
START = time.perf_counter()
ROWS: list[dict] = []          # the final table: one dict per line
REPORT: dict = {"rows": ROWS}


def elapsed() -> float:
    return time.perf_counter() - START


def row(part: str, what: str, value: str, note: str = "", **data) -> None:
    ROWS.append(dict(part=part, what=what, value=value, note=note, **data))
    print(f"[{elapsed():6.1f}s] {part} | {what} | {value} | {note}", flush=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


SMOL = smollm2_lora_layout()      # SmolLM2-135M's LoRA layout, P = 460,800 in 120 pieces
A_CASES = [  # (a): kind, B, layout, k
    ("rademacher", 64, SMOL, 8192), ("gaussian", 64, SMOL, 8192),
    ("rademacher", 1, [("w", 1000)], 512), ("gaussian", 16, [("w", 12305)], 8192),
    ("rademacher", 16, [("w", 1 << 20)], 4096), ("rademacher", 33, [("w", 70001)], 1000)]
B_SHAPES = [  # (b): label, B, layout, k
    ("SmolLM2 LoRA", 64, SMOL, 8192), ("one piece", 16, [("w", 1 << 20)], 4096)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save() -> None:
    """Write what there is so far to $OUT/gpu_check.json (after every part)."""
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.json").write_text(json.dumps(REPORT, indent=2, default=str))


def triton_off():
    """GRADPROJ_NO_TRITON=1 inside: the torch path, should HashProjector dispatch to the kernel."""
    return mock.patch.dict(os.environ, {"GRADPROJ_NO_TRITON": "1"})


def pieces_of(layout, batch, gen, dtype=torch.float32):
    return [(n, torch.randn(batch, c, device=DEVICE, generator=gen, dtype=dtype))
            for n, c in layout]


def bench_ms(fn, rep_ms: int = 200) -> float:
    """Median milliseconds of fn() (triton.testing.do_bench: warm-up, L2 flushed per call)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


# ---------------------------------------------------------------------------- (a)

BOUNDS = {("rademacher", "split"): 1e-5, ("gaussian", "split"): 5e-5,
          ("rademacher", "bf16"): 1e-2, ("gaussian", "bf16"): 1e-2}


def part_a() -> bool:
    from gradproj.projection.kernels import project_pieces_triton

    ok_all = True
    gen = torch.Generator(device=DEVICE).manual_seed(2024)
    for kind, batch, layout, k in A_CASES:
        spec = ProjectorSpec(kind, k, seed=7)
        pieces = pieces_of(layout, batch, gen)
        # the torch reference on the GPU (not the kernel HashProjector dispatches to on CUDA)
        ref = HashProjector(ProjectorSpec(kind, k, seed=7, dtype="float64"), layout,
                            use_triton=False).project({n: t.double() for n, t in pieces})
        p = sum(n for _, n in layout)
        k_cpu = min(k, 64)
        # float64 on the CPU: an fp32 sum over ~1e6 columns is itself ~3e-5 off
        ref_cpu = HashProjector(ProjectorSpec(kind, k_cpu, seed=7, dtype="float64"),
                                layout).project({n: t.cpu().double() for n, t in pieces}
                                                ) * math.sqrt(k_cpu / k)
        shape = f"{kind} B={batch} P={p} ({len(layout)} pieces) k={k}"
        for precision in ("split", "bf16"):
            out = project_pieces_triton(spec, pieces, precision=precision)
            sync()
            e_gpu, e_cpu = rel(out, ref), rel(out[:, :k_cpu].cpu(), ref_cpu)
            bound = BOUNDS[(kind, precision)]
            if precision == "split":   # fp32 accumulation over p terms: ~2^-24·√p
                bound = max(bound, (3.0 if kind == "gaussian" else 1.0) * 1.5e-7 * math.sqrt(p))
            ok = e_gpu < bound and e_cpu < bound and bool(torch.isfinite(out).all())
            ok_all &= ok
            row("a", f"{shape} {precision}", f"gpu {e_gpu:.2e} / cpu {e_cpu:.2e}",
                f"bound {bound:.0e}: {'ok' if ok else 'FAIL'}", kind=kind, batch=batch, P=p,
                k=k, precision=precision, rel_gpu=e_gpu, rel_cpu=e_cpu, bound=bound, ok=ok)
    return ok_all


# ---------------------------------------------------------------------------- (b)

def part_b(budget_s: float) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    for label, batch, layout, k in B_SHAPES:
        bench_shape(label, batch, layout, k, gen, sweep=label == "SmolLM2 LoRA"
                    and elapsed() < budget_s * 0.45)
        empty_cache()


def bench_shape(label: str, batch: int, layout, k: int, gen, sweep: bool) -> None:
    from gradproj.projection.kernels import KernelConfig, default_config, project_pieces_triton

    p = sum(n for _, n in layout)
    name = f"{label} B={batch} P={p} k={k}"
    pieces = pieces_of(layout, batch, gen)
    flat = torch.cat([t for _, t in pieces], dim=1)
    limit = None

    def speed(ms: float) -> str:
        return f"{ms:8.3f} ms  ({k * p / ms / 1e9:7.1f} T entries of R/s)"

    def vs_limit(ms: float) -> str:
        return f"{ms / limit:.2f}× cuBLAS bf16" if limit else ""

    for dt, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        try:
            r_mat = torch.randn(k, p, device=DEVICE, dtype=dt, generator=gen)
            xx = flat.to(dt)
            ms = bench_ms(lambda xx=xx, r_mat=r_mat: xx @ r_mat.T)
            gbs = r_mat.numel() * r_mat.element_size() / ms / 1e6
            row("b", f"{name}: cuBLAS {dname}, prebuilt R", speed(ms),
                f"reads R at {gbs:.0f} GB/s" + (" (the limit)" if dname == "bf16" else ""),
                shape=label, impl=f"cublas-{dname}", ms=ms)
            limit = ms if dname == "bf16" else limit
            del r_mat, xx
        except torch.OutOfMemoryError:
            row("b", f"{name}: cuBLAS {dname}, prebuilt R", "skipped", "out of memory")
        empty_cache()
    for kind in ("rademacher", "gaussian"):
        spec = ProjectorSpec(kind, k, seed=0)
        for precision in ("split", "bf16"):
            ms = bench_ms(lambda spec=spec, precision=precision: project_pieces_triton(
                spec, pieces, precision=precision))
            row("b", f"{name}: triton {kind} {precision}", speed(ms), vs_limit(ms),
                shape=label, impl=f"triton-{kind}-{precision}", ms=ms,
                config=str(default_config()))
    spec = ProjectorSpec("rademacher", k, seed=0)
    # default 128,32,8,2; 256-row tiles halve the re-reads of x (L2 → SM traffic of
    # 4·B/block_k bytes per entry of R), 16 warps keep them within 128 registers a thread.
    configs = (KernelConfig(128, 64, 8, 2), KernelConfig(128, 32, 8, 1),
               KernelConfig(256, 32, 8, 2), KernelConfig(256, 32, 16, 2),
               KernelConfig(64, 32, 4, 2),
               KernelConfig(128, 32, 8, 2, per_element=True)) if sweep else ()
    for cfg in configs:
        tag = (f"{cfg.block_k},{cfg.block_n},{cfg.num_warps},{cfg.num_stages}"
               f"{',1' if cfg.per_element else ''}")
        try:
            ms = bench_ms(lambda cfg=cfg: project_pieces_triton(spec, pieces, config=cfg), 100)
            row("b", f"{name}: triton rademacher split, config {tag}", speed(ms),
                f"tile sweep; {vs_limit(ms)}", shape=label, impl="triton-sweep", ms=ms,
                config=tag)
        except Exception as err:   # a config that does not compile or fit
            row("b", f"{name}: triton config {tag}", "failed", repr(err)[:120])
    ref = HashProjector(spec, layout)
    with triton_off():
        ms = bench_ms(lambda: ref.project(dict(pieces)), 100)
    row("b", f"{name}: torch reference HashProjector", speed(ms), vs_limit(ms), shape=label,
        impl="torch-ref", ms=ms)
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError:
        row("b", f"{name}: TRAK BasicProjector", "skipped", "traker not importable")
        return
    trak = BasicProjector(grad_dim=p, proj_dim=k, seed=0, proj_type=ProjectionType.rademacher,
                          device=DEVICE, block_size=100, dtype=torch.float32)
    ms = bench_ms(lambda: trak.project(flat, model_id=0), 100)
    row("b", f"{name}: TRAK BasicProjector (fp32, blocks of 100)", speed(ms), vs_limit(ms),
        shape=label, impl="trak-basic", ms=ms)


# ---------------------------------------------------------------------------- (c)

class TimedProjector:
    """Wraps a projector: times each call with the GPU synchronised on both sides."""

    def __init__(self, inner, fn=None):
        self.inner, self.fn, self.seconds, self.spec = inner, fn, 0.0, inner.spec

    def project(self, grads):
        sync()
        t = time.perf_counter()
        if self.fn is None:
            out = self.inner.project(grads)
        else:
            out = self.fn([(n, grads[n].flatten(1)) for n, _ in self.inner.layout
                           if n in grads])
        sync()
        self.seconds += time.perf_counter() - t
        return out


def part_c(n_pairs: int, batch_size: int) -> None:
    from gradproj.core.model import LoadedModel, ModelSettings
    from gradproj.core.objectives import DPO
    from gradproj.core.tokens import batches
    from gradproj.evaluation.state import trainable
    from benchmarks.harness.step import objective_step
    from gradproj.projection.kernels import project_pieces_triton
    from gradproj.store.build import FeatureComputer, StoreSettings

    model = random_smollm2(DEVICE)
    device = next(model.parameters()).device
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loaded = LoadedModel(model=model, tokenizer=SimpleNamespace(pad_token_id=0),
                         settings=ModelSettings(model="smollm2-architecture-random-init",
                                                device=str(device)),
                         base_fingerprint="random-init")
    pairs, warm = random_token_pairs(n_pairs), random_token_pairs(2 * batch_size, seed=1)
    settings = StoreSettings(proj_dim=8192, batch_size=batch_size, proj_batch=64)
    tokens = sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    row("c", "setup", f"{n_pairs} pairs, {tokens / n_pairs / 2:.0f} tokens/sequence",
        f"LoRA P={n_lora}, k=8192, batch {batch_size}, projection every 64 pairs")
    feats = {}
    for label in ("torch reference", "triton"):
        computer = FeatureComputer(loaded, settings, DPO(0.1))
        if label == "triton":
            spec = computer.projector.spec
            computer.projector = TimedProjector(
                computer.projector, lambda pieces, spec=spec: project_pieces_triton(spec, pieces))
        else:
            computer.projector = TimedProjector(computer.projector)
        with contextlib.ExitStack() as stack:
            if label != "triton":
                stack.enter_context(triton_off())
            stack.callback(computer.close)
            computer.features(warm)
            computer.projector.seconds = 0.0
            sync()
            t = time.perf_counter()
            feats[label], rows = computer.features(pairs)
            sync()
            total = time.perf_counter() - t
        share = computer.projector.seconds / total
        row("c", f"build features, {label} projection", f"{n_pairs / total:8.1f} pairs/s",
            f"{total:.2f} s; projection {computer.projector.seconds:.2f} s = {share:.1%}",
            impl=label, pairs_per_s=n_pairs / total, seconds=total,
            projection_seconds=computer.projector.seconds, finite=int((rows["status"] == 0).sum()))
    a, b = (torch.from_numpy(feats[x].astype("float32")) for x in ("triton", "torch reference"))
    row("c", "features: triton vs torch reference (float16 store rows)", f"{rel(a, b):.2e}",
        "relative ‖Δ‖/‖ref‖", rel_features=rel(a, b))

    opt = torch.optim.AdamW(list(trainable(model).values()), lr=5e-4)

    def step(batch):   # policy fwd+bwd, reference fwd, AdamW
        objective_step(model, batch.to(device), DPO(0.1), opt)

    for batch in batches(warm, batch_size, 0):
        step(batch)
    sync()
    t = time.perf_counter()
    for batch in batches(pairs, batch_size, 0):
        step(batch)
    sync()
    train = time.perf_counter() - t
    row("c", "plain DPO training step (policy fwd+bwd, ref fwd, AdamW)",
        f"{n_pairs / train:8.1f} pairs/s", f"{train:.2f} s", impl="train",
        pairs_per_s=n_pairs / train, seconds=train)
    for r in [r for r in ROWS if r.get("impl") in ("torch reference", "triton")]:
        row("c", f"build / train, {r['impl']} projection",
            f"{r['pairs_per_s'] / (n_pairs / train):.2f}×",
            "store-build pairs/s over training pairs/s")


# ---------------------------------------------------------------------------- main

def environment() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, sms=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    info["pytest"] = os.environ.get("GPU_CHECK_PYTEST", "not run")
    return info


def print_table() -> None:
    cols = ("part", "what", "value", "note")
    print("\n" + markdown_table(cols, [[r[c] for c in cols] for r in ROWS]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="skip the optional parts once this much time has gone")
    ap.add_argument("--parts", default="abc")
    args = ap.parse_args(argv)
    REPORT["environment"] = env = environment()
    print(json.dumps(env), flush=True)
    ok = torch.cuda.is_available()
    if not ok:
        row("-", "CUDA", "not available", "nothing was checked")
    for part, fn in (("a", part_a), ("b", lambda: part_b(args.budget_s)),
                     ("c", lambda: part_c(args.pairs, args.batch_size))):
        if part not in args.parts or not torch.cuda.is_available():
            continue
        if part != "a" and elapsed() > args.budget_s:
            row(part, "skipped", "-", f"time budget ({args.budget_s:.0f} s) spent")
            continue
        try:
            result = fn()
            ok &= result is not False
        except Exception as err:   # report and go on with the other parts
            ok = False
            traceback.print_exc()
            row(part, "ERROR", type(err).__name__, str(err).splitlines()[0][:150]
                if str(err) else "")
        empty_cache()
        save()
    REPORT["ok"], REPORT["seconds"] = ok, elapsed()
    row("-", "total", f"{elapsed():.1f} s",
        "all correctness checks ok" if ok else "FAILURES, or nothing checked")
    save()
    print_table()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
