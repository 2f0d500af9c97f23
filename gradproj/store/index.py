"""Inner-product search over a store: FAISS indexes and an exact streaming path.

- ``flat``: ``IndexFlatIP`` — exact inner products, the default when the store fits in memory.
- ``ivf-pq``: ``IndexIVFPQ`` with inner-product metric (``nlist`` cells, ``m`` sub-quantizers of
  8 bits) — compressed, approximate, for stores that do not fit in memory.
- ``stream_extremes`` / ``stream_topk``: exact top-k (most helpful and most harmful in one pass)
  by reading the memory-mapped shards in cache-sized chunks (memory bounded whatever N is);
  ``stream_matvec`` likewise for the mean-gradient query.

An index is saved beside the store as ``index-<kind>[-<params>]`` files (IVF-PQ split into parts
of ``part_rows`` rows that share one trained quantizer, searched together via ``IndexShards`` with
memory-mapped inverted lists) and a ``.json`` sidecar holding the store's content key (shard
checksums) and the file names; it is rebuilt only when the store changed.
faiss-gpu is used when it is installed and a GPU is present.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gradproj.core.errors import BadInput, GradprojError
from gradproj.core.settings import Settings, at_least_one, setting
from gradproj.store.native import half_matvec
from gradproj.core.atomic import atomic_path, write_json_atomic
from gradproj.store.manifest import STATUS
from gradproj.store.shards import Store


@dataclass(frozen=True)
class IndexSettings(Settings):
    """Which FAISS index answers the top-k search."""

    kind: str = setting("flat", "FAISS index for the top-k search: flat (exact) or ivf-pq "
                                "(compressed, approximate).", choices=("flat", "ivf-pq"),
                        option="index")
    nlist: int = setting(256, "IVF cells (ivf-pq).", check=at_least_one)
    m: int = setting(64, "PQ sub-quantizers; must divide k (ivf-pq).", check=at_least_one)
    nprobe: int = setting(32, "Cells visited per query (ivf-pq).", check=at_least_one)
    part_rows: int = setting(1_000_000, "ivf-pq: rows per index file; the parts are searched "
                                        "together.", check=at_least_one, cli=False)
    refine: int = setting(10, "ivf-pq: fetch refine x top-k candidates and re-rank them "
                              "exactly from the store (1: off).", check=at_least_one)

    def filename(self) -> str:
        return "index-flat" if self.kind == "flat" else f"index-ivfpq-{self.nlist}-{self.m}"


INDEX_FORMAT = 2
"""Saved indexes of another format are rebuilt (2: valid rows only, ids = store rows)."""


def store_key(store: Store) -> str:
    """A hash of the store's content (its shard checksums)."""
    h = hashlib.sha256()
    for s in store.shards:
        h.update(f"{s.name}:{s.rows}:{s.grads_sha256}".encode())
    return h.hexdigest()[:16]


def _faiss():
    try:
        import faiss
    except ImportError:
        raise BadInput("FAISS is not installed: pip install 'gradproj[cpu]' (faiss-cpu) or "
                       "'gradproj[gpu]' (faiss-gpu-cu12), not both") from None
    return faiss


def _to_gpu(index):
    faiss = _faiss()
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def _train_ivfpq(store: Store, settings: IndexSettings, valid: np.ndarray, seed: int = 0):
    """An empty IVF-PQ index (inner product) trained on a random sample of the store's rows."""
    faiss = _faiss()
    k, n = store.k, len(store)
    if k % settings.m:
        raise GradprojError(f"--m {settings.m} must divide the store's k={k}")
    nlist = min(settings.nlist, max(1, n // 39))       # FAISS wants ~39 training points a cell
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(k), k, nlist, settings.m, 8,
                             faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(valid)
    sample = np.sort(rng.choice(rows, size=min(len(rows), max(39 * max(nlist, 256), 10000)),
                                replace=False))
    index.train(gather_rows(store, sample))
    index.nprobe = settings.nprobe
    return index


def valid_rows(store: Store) -> np.ndarray:
    """[N] bool: rows with status ok and a finite norm (the only rows an index holds)."""
    return (store.column("status") == STATUS["ok"]) & np.isfinite(store.column("norm"))


def _add_rows(index, store: Store, valid: np.ndarray, lo: int, hi: int,
              block_rows: int) -> None:
    """Add the ``valid`` store rows of [lo, hi) with their row numbers as FAISS ids."""
    for start, block in store.blocks(block_rows):
        a, b = max(lo, start), min(hi, start + len(block))
        if a < b:
            keep = np.flatnonzero(valid[a:b])
            index.add_with_ids(np.ascontiguousarray(block[a - start + keep], np.float32),
                               (a + keep).astype(np.int64))


def build_index(store: Store, settings: IndexSettings = IndexSettings(), *,
                block_rows: int = 4096, seed: int = 0):
    """A FAISS index over the valid rows of ``store`` (FAISS id = store row number); rows whose
    gradient was non-finite are left out, so a search never returns them."""
    faiss = _faiss()
    valid = valid_rows(store)
    if settings.kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(store.k))
    else:
        index = _train_ivfpq(store, settings, valid, seed)
    _add_rows(index, store, valid, 0, len(store), block_rows)
    return index


def build_index_parts(store: Store, settings: IndexSettings, directory: Path, *,
                      block_rows: int = 4096, seed: int = 0) -> list[Path]:
    """IVF-PQ over the store split into files of ``settings.part_rows`` rows, all sharing one
    trained quantizer; returns the part files (``<name>.partNNN.faiss``)."""
    faiss = _faiss()
    valid = valid_rows(store)
    trained = _train_ivfpq(store, settings, valid, seed)
    paths = []
    for j, lo in enumerate(range(0, len(store), settings.part_rows)):
        part = faiss.clone_index(trained)
        _add_rows(part, store, valid, lo, min(len(store), lo + settings.part_rows), block_rows)
        path = directory / f"{settings.filename()}.part{j:03d}.faiss"
        with atomic_path(path) as tmp:
            faiss.write_index(part, str(tmp))
        paths.append(path)
        del part
    return paths


class ShardedIndex:
    """IVF-PQ part files searched as one ``faiss.IndexShards``; inverted lists are memory-mapped,
    so resident memory stays bounded whatever the store's size."""

    def __init__(self, paths: list[Path], k: int, nprobe: int):
        faiss = _faiss()
        self.parts = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in paths]
        self.shards = faiss.IndexShards(k, False, False)   # not threaded; ids already global
        for part in self.parts:      # self.parts keeps them alive as long as the shards
            part.nprobe = nprobe
            self.shards.add_shard(part)

    @property
    def ntotal(self) -> int:
        return self.shards.ntotal

    def search(self, q: np.ndarray, top_k: int):
        return self.shards.search(q, top_k)


def load_or_build_index(store: Store, settings: IndexSettings = IndexSettings()):
    """The saved index if it matches the store's content, else a new one (saved).

    ``flat`` is one file; ``ivf-pq`` is one or more part files joined in an IndexShards."""
    faiss = _faiss()
    meta_path = store.root / f"{settings.filename()}.json"
    key = store_key(store)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        paths = [store.root / p for p in meta.get("files", [])]
        if (meta.get("store_key") == key and meta.get("format") == INDEX_FORMAT and paths
                and all(p.is_file() for p in paths)):
            if settings.kind == "flat":
                return _to_gpu(faiss.read_index(str(paths[0])))
            return ShardedIndex(paths, store.k, settings.nprobe)
    if settings.kind == "flat":
        path = store.root / f"{settings.filename()}.faiss"
        with atomic_path(path) as tmp:
            faiss.write_index(build_index(store, settings), str(tmp))
        paths = [path]
    else:
        paths = build_index_parts(store, settings, store.root)
    write_json_atomic(meta_path, {"store_key": key, "format": INDEX_FORMAT, "kind": settings.kind,
                                  "nlist": settings.nlist, "m": settings.m, "rows": len(store),
                                  "files": [p.name for p in paths]})
    return load_or_build_index(store, settings)


def search(index, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [M, top_k], row ids [M, top_k]) of the largest inner products with each query."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return index.search(q, top_k)


def gather_rows(store: Store, rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), k] features of the given store rows, read from the memory maps."""
    out = np.empty((len(rows), store.k), np.float32)
    for shard in store.shards:
        sel = (rows >= shard.start) & (rows < shard.stop)
        if sel.any():
            out[sel] = store.shard_features(shard)[rows[sel] - shard.start]
    return out


def search_refined(index, store: Store, queries: np.ndarray, top_k: int,
                   refine: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Approximate search for ``refine · top_k`` candidates, re-ranked by their exact inner
    products read from the store on disk (the compressed index stays small in memory)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, cand = index.search(q, min(top_k * refine, len(store)))
    scores = np.full((len(q), top_k), -np.inf, np.float32)
    ids = np.full((len(q), top_k), -1, np.int64)
    for m in range(len(q)):
        c = np.unique(cand[m][cand[m] >= 0])
        exact = gather_rows(store, c) @ q[m]
        order = np.argsort(-exact, kind="stable")[:top_k]
        scores[m, :len(order)], ids[m, :len(order)] = exact[order], c[order]
    return scores, ids


CHUNK_BYTES = 8 << 20
"""float32 bytes converted at a time by the streaming path: small enough to stay in the CPU's
cache between the fp16 → fp32 conversion and the matmul that reads it (a 512 MiB buffer made the
mean query DRAM-bound at 3–9 % of the read bandwidth; docs/benchmarks/bench_query.md)."""


def chunk_rows(k: int, block_rows: int | None = None) -> int:
    """Rows per streamed chunk: ``block_rows`` if given, else as many as fit in CHUNK_BYTES."""
    return max(1, int(block_rows) if block_rows else CHUNK_BYTES // (4 * k))


def _float_chunks(store: Store, rows: int):
    """(first row, float32 torch [≤ rows, k]) over the store; the fp16 → fp32 conversion goes
    into one reused buffer (torch's copy_ into a preallocated tensor is ~7× faster than astype).
    Store.blocks yields views of the memory maps, so the copy is the only read."""
    buf = torch.empty((max(1, min(rows, len(store))), store.k), dtype=torch.float32)
    for start, block in store.blocks(rows):
        out = buf[:len(block)]
        out.copy_(torch.from_numpy(block))
        yield start, out


def _fused_matvec(store: Store, vector: np.ndarray, out: np.ndarray) -> bool:
    """out = features @ vector with the fused float16 kernel (gradproj.store.native), each
    memory-mapped block read in place; False when the kernel is not available."""
    vector = np.ascontiguousarray(vector, np.float32)
    for start, block in store.blocks():
        if not half_matvec(block, vector, out[start:start + len(block)], torch.get_num_threads()):
            return False
    return True


def stream_matvec(store: Store, vectors: np.ndarray, block_rows: int | None = None,
                  row_scale: np.ndarray | None = None) -> np.ndarray:
    """features @ vectors for the whole store, chunk by chunk: [N, k] @ [k, c] → [N, c] fp32,
    each row multiplied by ``row_scale`` when given. One vector (the mean query) goes through
    the fused float16 kernel where it is available (:mod:`gradproj.store.native`: no buffer, the
    memory maps read once); otherwise, and for several vectors, float32 chunks and torch.mm.

    Peak memory is one chunk (``chunk_rows`` float32 rows, 8 MiB by default) plus the output.
    """
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    out = np.empty((len(store), v.shape[1]), np.float32)
    if v.shape[1] != 1 or not _fused_matvec(store, v[:, 0].numpy(), out[:, 0]):
        res = torch.from_numpy(out)
        for start, block in _float_chunks(store, chunk_rows(store.k, block_rows)):
            torch.mm(block, v, out=res[start:start + len(block)])
    if row_scale is not None:
        out *= np.asarray(row_scale, np.float32)[:, None]
    return out


def stream_extremes(store: Store, queries: np.ndarray, top_k: int,
                    block_rows: int | None = None, *, valid: np.ndarray | None = None,
                    row_scale: np.ndarray | None = None, sides=("high", "low")) -> dict:
    """Exact top-k of features @ queries.T in one pass over the store, for each requested side:
    ``{"high": (scores [M, top_k], rows [M, top_k]), "low": (...)}`` — the largest and the
    smallest inner products. Rows with ``valid`` False never appear; each row's scores are
    multiplied by ``row_scale`` (e.g. 1/‖g_d‖ for cosine) when given. The lists are
    min(top_k, N) wide; where fewer rows are valid, the places of invalid rows have score NaN
    and row -1. NaN scores (a row of inf) count as invalid."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    m = q.shape[0]
    scale = None if row_scale is None else torch.from_numpy(
        np.ascontiguousarray(row_scale, dtype=np.float32))
    mask = None if valid is None else torch.from_numpy(np.asarray(valid, dtype=bool))
    best = {side: (torch.empty((m, 0)), torch.empty((m, 0), dtype=torch.long)) for side in sides}
    for start, block in _float_chunks(store, chunk_rows(store.k, block_rows)):
        stop = start + len(block)
        scores = q @ block.T                                        # [M, rows]
        if scale is not None:
            scores *= scale[start:stop]
        bad = torch.isnan(scores)
        if mask is not None:
            bad |= ~mask[start:stop]
        ids = torch.arange(start, stop).expand(m, -1)
        for side in sides:
            s = scores
            if bad.any():
                s = scores.masked_fill(bad, float("-inf") if side == "high" else float("inf"))
            cand_s, cand_i = torch.cat([best[side][0], s], 1), torch.cat([best[side][1], ids], 1)
            kk = min(top_k, cand_s.shape[1])
            top, pos = torch.topk(cand_s, kk, dim=1, largest=side == "high")
            best[side] = (top, torch.gather(cand_i, 1, pos))
    out = {}
    for side, (s, i) in best.items():
        s, i = s.numpy().copy(), i.numpy().copy()
        gone = ~np.isfinite(s)
        s[gone], i[gone] = np.nan, -1
        out[side] = (s, i)
    return out


def stream_topk(store: Store, queries: np.ndarray, top_k: int, block_rows: int | None = None,
                largest: bool = True, valid: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores [M, top_k], row ids [M, top_k]) of features @ queries.T, streaming
    the store in chunks; ``largest=False`` gives the smallest inner products."""
    side = "high" if largest else "low"
    return stream_extremes(store, queries, top_k, block_rows, valid=valid, sides=(side,))[side]
