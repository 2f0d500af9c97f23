"""What an influence query over a gradient store costs, against the machine's limits.

A store holds N rows of k float16 features (2·N·k bytes); a query has M validation vectors
Q [M, k]. The queries timed by :func:`query_cost`:

    mean      IF = X ḡ, ḡ = mean_j Q_j        one pass over X, bound by memory bandwidth
    matvec    S = X Qᵀ [N, M]                  2·N·k·M FLOPs, bound by matmul FLOP/s
    topk      the 10 best rows per query       the same FLOPs, a running top-k
    mean_ref  a reference that is not gradproj code: the mean query with the float16 → float32
              cast done by torch, 256 rows at a time into one reused buffer
    mean_numpy  the plain NumPy matrix-vector product over the same memory maps (block @ v,
              NumPy casting each float16 block to float32)

Each is reported as a fraction of its limit (:func:`limit_fractions`): store bytes / time over
the read bandwidth, and for the per-pair queries 2·N·k·M / time over the matmul FLOP/s — with
the limits measured in the same process just before and after the query.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import measure
from benchmarks.harness.measure import PeakSampler, proc_status

QUERIES = ("mean", "matvec", "topk", "mean_ref", "mean_numpy")
REFERENCES = ("mean_ref", "mean_numpy")
"""Queries that are not gradproj code (run warm, beside the mean query)."""


def random_store(root: str | Path, n: int, k: int, shard_rows: int = 16384,
                 seed: int = 0) -> dict:
    """Write a store of ``n`` random N(0, 1) float16 rows [n, k] in shards of ``shard_rows``
    (gradproj's store format, rademacher spec); seconds taken and bytes (features, on disk)."""
    from gradproj.projection.spec import ProjectorSpec
    from gradproj.store.manifest import ROW_DTYPE
    from gradproj.store.shards import StoreWriter

    root = Path(root)
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    with StoreWriter(root, {"projector": ProjectorSpec(kind="rademacher", k=k).to_dict()}) as w:
        for lo in range(0, n, shard_rows):
            rows_n = min(shard_rows, n - lo)
            f = rng.standard_normal((rows_n, k), dtype=np.float32).astype(np.float16)
            rows = np.zeros(rows_n, ROW_DTYPE)
            rows["id"] = [f"r{i}" for i in range(lo, lo + rows_n)]
            rows["norm"] = np.sqrt(k)        # ~‖row‖ (not used by these queries)
            w.add_shard(f, rows)
            del f
        w.finish()
    return {"seconds": time.perf_counter() - t, "bytes": n * k * 2,
            "disk_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file())}


def _mean_numpy(store, v):
    """X v by NumPy alone: ``block @ v`` over each memory-mapped float16 block."""
    v = v.astype(np.float32)
    out = np.empty(len(store), np.float32)
    for start, block in store.blocks(65536):
        out[start:start + len(block)] = block @ v
    return out


def _mean_reference(store, v, ref_rows: int = 256):
    """X v with the cast by torch into one reused [ref_rows, k] float32 buffer, one thread."""
    import torch

    torch.set_num_threads(1)                  # memory-bound: one thread is enough
    v = torch.from_numpy(v.astype(np.float32))
    out = torch.empty(len(store))
    buf = torch.zeros(ref_rows, len(v))
    for start, block in store.blocks(65536):
        block = torch.from_numpy(block)
        for i in range(0, len(block), ref_rows):
            part = block[i:i + ref_rows]
            b = buf[:len(part)]
            b.copy_(part)
            torch.mv(b, v, out=out[start + i:start + i + len(part)])
    return out.numpy()


def query_cost(store_root: str | Path, query: str, repeats: int, m: int = 256,
               top_k: int = 10) -> dict:
    """Time ``1 + repeats`` passes of ``query`` (module docstring) with M = ``m`` random
    validation vectors: the seconds of each pass, this process's memory (base, peak RSS after a
    reset, sampled anonymous/file peaks), the output size, a relative error against a float64
    computation on the first rows (≤ 1024, of the first shard), and the limits measured around
    it. Run it in a fresh process so that the peak memory is the query's own."""
    from gradproj.attribution.influence import ValidationFeatures, mean_influence
    from gradproj.store.index import stream_matvec, stream_topk
    from gradproj.store.shards import Store

    store = Store(store_root, verify=False)
    n = len(store)
    q = np.random.default_rng(1).standard_normal((m, store.manifest["projector"]["k"]),
                                                 dtype=np.float32)
    val = ValidationFeatures([f"v{i}" for i in range(m)], q, {})
    run = {"mean": lambda: mean_influence(store, val), "matvec": lambda: stream_matvec(store, q.T),
           "topk": lambda: stream_topk(store, q, top_k),
           "mean_ref": lambda: _mean_reference(store, q.astype(np.float64).mean(0)),
           "mean_numpy": lambda: _mean_numpy(store, q.astype(np.float64).mean(0))}[query]
    k = q.shape[1]
    lim_before, load_before = measure.bandwidth_and_flops(k, m), os.getloadavg()[0]
    base = proc_status()
    hwm_reset = measure.reset_peak_rss()
    base_hwm = proc_status()["VmHWM"]
    times, result = [], None
    with PeakSampler() as sampler:
        for _ in range(1 + repeats):
            result = None                              # the previous result is not held twice
            t = time.perf_counter()
            result = run()
            times.append(time.perf_counter() - t)
    end, load_after = proc_status(), os.getloadavg()[0]
    lim_after = measure.bandwidth_and_flops(k, m)
    out_bytes = sum(r.nbytes for r in result) if isinstance(result, tuple) else result.nbytes
    first = np.asarray(store.shard_features(store.shards[0])[:1024]).astype(np.float64)
    if query == "topk":
        ids = result[1]
        err = 0.0 if ids.shape == (m, top_k) and (ids >= 0).all() and (ids < n).all() else 1.0
    else:
        expect = first @ (q.T.astype(np.float64) if query == "matvec"
                          else q.astype(np.float64).mean(0))
        err = float(np.max(np.abs(result[:len(first)] - expect)) / np.max(np.abs(expect)))
    return {"query": query, "n": n, "times": times, "first": times[0],
            "warm_median": measure.median(times[1:]),
            "peak_rss_increase": end["VmHWM"] - base_hwm if hwm_reset else None,
            "peak_anon_increase": sampler.peak["RssAnon"] - base["RssAnon"],
            "peak_file_increase": sampler.peak["RssFile"] - base["RssFile"],
            "rss_base": base["VmRSS"], "anon_base": base["RssAnon"], "file_base": base["RssFile"],
            "hwm_reset": hwm_reset, "hwm_base": base_hwm, "hwm": end["VmHWM"],
            "peak_anon": sampler.peak["RssAnon"], "peak_file": sampler.peak["RssFile"],
            "output_bytes": int(out_bytes), "rel_err": err,
            "local_limits": {key: max(lim_before[key], lim_after[key]) for key in lim_before},
            "local_limits_before": lim_before, "local_limits_after": lim_after,
            "loadavg_1min": [load_before, load_after]}


def limit_fractions(res: dict, n: int, k: int, m: int, lim: dict, suffix: str = "") -> None:
    """Add to ``res`` (with ``warm_median`` and ``first`` seconds): ``bytes_frac`` (store bytes
    / time / bandwidth, warm and first pass) and, for matvec and topk, ``flop_frac``."""
    b = n * k * 2
    res["bytes_frac" + suffix] = b / res["warm_median"] / lim["bandwidth"]
    res["bytes_frac_first" + suffix] = b / res["first"] / lim["bandwidth"]
    if res["query"] in ("matvec", "topk"):
        res["flop_frac" + suffix] = 2 * n * k * m / res["warm_median"] / lim["matmul_flops"]


SYNTHETIC_CONTEXT = ("limits", "limits_start", "limits_end", "machine", "repeats", "quick",
                     "total_seconds")
"""The keys of a results dict measured with its synthetic part (kept with it by a merge)."""


def merge_results(results: dict, old: dict) -> dict:
    """``results`` with the parts it lacks (``synthetic``, ``smollm2``) taken from ``old``, an
    earlier run's results; a synthetic part comes with its :data:`SYNTHETIC_CONTEXT`."""
    for part in ("synthetic", "smollm2"):
        if part not in results and part in old:
            results = dict(results, **{part: old[part]})
            if part == "synthetic":
                results.update({key: old[key] for key in SYNTHETIC_CONTEXT if key in old})
    return results


def smollm2_step(step: str, root: str | Path, n: int = 0, n_val: int = 0, k: int = 8192,
                 top_k: int = 10, max_length: int = 64) -> dict:
    """Load the embedded SmolLM2 (CPU), then time either a store build (``step="build"``) of
    ``n`` generated training pairs at ``root`` (= recomputing every training gradient), or
    answering ``n_val`` new validation pairs from it (``"answer"``: validation gradients, IF,
    TIF, top-k). Load time is reported apart; memory as in :func:`query_cost`. Run it in a
    fresh process: a process computing gradients keeps ~0.4 GiB of freed heap per batch."""
    from gradproj.attribution.influence import InfluenceSettings, compute_influence
    from gradproj.core.data import pairs_from_records
    from gradproj.core.model import ModelSettings, load_model
    from gradproj.core.objectives import PreferenceSettings
    from gradproj.demo.synthetic import make_records
    from gradproj.store.build import StoreSettings, build_store
    from gradproj.store.shards import Store

    t = time.perf_counter()
    loaded = load_model(ModelSettings(model="smollm2", device="cpu"))
    out = {"load_seconds": time.perf_counter() - t, "anon_after_load": proc_status()["RssAnon"],
           "loadavg_1min": [os.getloadavg()[0]]}
    if step == "build":
        pairs = pairs_from_records(make_records(n, 0, "train"), origin="<bench train>")
        t = time.perf_counter()
        store = build_store(loaded, pairs, StoreSettings(proj_dim=k, batch_size=8), root,
                            pref=PreferenceSettings(max_length=max_length), progress=False)
        out.update(seconds=time.perf_counter() - t, timing=store.manifest.get("timing"),
                   rows=len(store))
    else:
        val = pairs_from_records(make_records(n_val, 2, "val"), origin="<bench val>")
        store = Store(root)
        t = time.perf_counter()
        res = compute_influence([store], val, InfluenceSettings(top_k=top_k), loaded=[loaded])
        out.update(seconds=time.perf_counter() - t, split=res.seconds, n_val_used=len(res.val_ids))
    end = proc_status()
    out.update(peak_rss=end["VmHWM"], anon_end=end["RssAnon"])
    out["loadavg_1min"].append(os.getloadavg()[0])
    return out


def build_versus_answer(run_step, n_train: int, n_val: int, tmp: str | Path, repeats: int = 2,
                        budget_min: float = 25.0, fallback: int = 500, estimate: bool = True,
                        log=print) -> dict:
    """The point of a store: building it for ``n_train`` pairs (= recomputing every training
    gradient) against answering ``n_val`` new validation pairs from it (median of ``repeats``).

    ``run_step(step, root, n=..., n_val=...)`` runs :func:`smollm2_step` (in a fresh process).
    With ``estimate``, 64 pairs are timed first; when the requested build would take longer
    than ``budget_min``, ``fallback`` pairs are built (fewer, in hundreds, if even those would
    exceed half the budget) and the cost of 2000 pairs is extrapolated, labelled so.
    """
    import shutil

    tmp = Path(tmp)
    out: dict = {"n_train_requested": n_train, "n_val": n_val}
    n = n_train
    if estimate:
        n_est = min(64, n_train)
        est = run_step("build", str(tmp / "smollm-est"), n=n_est)
        shutil.rmtree(tmp / "smollm-est")
        per_pair = est["seconds"] / n_est
        out["estimate"] = dict(est, n=n_est, seconds_per_pair=per_pair)
        if per_pair * n_train > budget_min * 60:
            n = min(fallback, n_train, max(100, int(budget_min * 30 / per_pair) // 100 * 100))
        log(f"[smollm2] estimate ({n_est} pairs) {per_pair:.3f} s/pair → {n_train} pairs ≈ "
            f"{per_pair * n_train / 60:.1f} min; building {n}")
    root = tmp / "smollm-store"
    shutil.rmtree(root, ignore_errors=True)
    build = run_step("build", str(root), n=n)
    out.update(n_train=n, build=build, build_seconds=build["seconds"],
               build_timing=build["timing"], store_rows=build["rows"])
    log(f"[smollm2] build of {n} pairs: {build['seconds']:.1f} s ({build['seconds'] / n:.3f} "
        f"s/pair) {build['timing']}; peak RSS {build['peak_rss'] / 2**30:.1f} GiB")
    answers = []
    for i in range(repeats):
        a = run_step("answer", str(root), n_val=n_val)
        answers.append(dict(a, **a["split"]))
        log(f"[smollm2] answer {i}: {a['seconds']:.1f} s {a['split']}; peak RSS "
            f"{a['peak_rss'] / 2**30:.1f} GiB")
    shutil.rmtree(root)
    answer = measure.median([a["seconds"] for a in answers])
    out.update(answers=answers, n_val_used=answers[-1]["n_val_used"],
               answer_first=answers[0]["seconds"], answer_median=answer,
               ratio_build_over_answer=out["build_seconds"] / answer,
               # without a store, answering means computing the training gradients too
               ratio_scratch_over_answer=(out["build_seconds"] + answer) / answer,
               extrapolated_2000=n < 2000)
    if n < 2000:
        out["build_seconds_2000_extrapolated"] = out["build_seconds"] / n * 2000
        out["ratio_2000_over_answer_extrapolated"] = out["build_seconds"] / n * 2000 / answer
    return out
