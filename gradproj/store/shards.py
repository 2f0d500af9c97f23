"""The gradient feature store: projected per-pair gradients on disk, written once, read many times.

One directory::

    manifest.json              schema, fingerprints, loss settings, projector spec, shard list
    shards/<name>.grads.npy    float16 [n, k] projected gradients (memory-mappable)
    shards/<name>.rows.npy     structured [n] array, one record per row (see ROW_DTYPE)
    lock                       held (flock) while a build writes; a second builder fails at once

Every shard file is written to a temporary name, fsynced and renamed, and only then listed in the
manifest (itself replaced atomically), so a build killed at any point leaves a valid store of the
shards committed so far, and ``resume`` continues from there. The manifest records each file's
sha256; opening a store checks them and refuses a missing or corrupt shard by name. No pickle:
``numpy.load(allow_pickle=False)`` and JSON.

Hashing a large store costs about as long as a query reads it, so a successful check is
remembered in ``verified.json`` (per file: size, mtime, ctime, inode and the checksum it
matched); with ``verify="auto"`` (the default) a file is hashed again only when any of these
changed. A file modified less than two seconds before it was hashed is not remembered (mtime
granularity: the "racy git" problem), so a change right after a check is still caught. What
"auto" cannot see is a change that leaves all four unchanged (silent disk corruption): run
``gradproj inspect`` (``verify=True``, every file hashed) for that. ``verify=False`` only checks
that the files exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradproj.core.atomic import atomic_path, write_atomic, write_json_atomic
from gradproj.core.errors import CorruptStore, GradprojError, IncompatibleStore
from gradproj.projection.spec import ProjectorSpec
from gradproj.store.manifest import (ROW_DTYPE, SCHEMA_VERSION, SPEC_FIELDS,
                                     STATUS_NAMES, current_rows, rank_manifest_path,
                                     upgrade_manifest)

VERIFIED_FILE = "verified.json"
RACY_NS = 2_000_000_000

def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    name: str
    start: int
    """First row of this shard in the store's row order."""
    rows: int
    grads_sha256: str
    rows_sha256: str

    @property
    def stop(self) -> int:
        return self.start + self.rows


class StoreLock:
    """An exclusive flock on ``STORE/<name>``: released by the kernel if the holder dies."""

    def __init__(self, root: Path, name: str = "lock"):
        self.path = root / name
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.path.read_text().strip() or "another process"
            raise GradprojError(f"{self.path.parent}: another build is writing this store "
                                f"({holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class StoreWriter:
    """Commits shards to a store directory under its lock; a manifest lists committed shards.

    Shard ``i`` holds rows ``[i · shard_size, ...)`` of the store and is named ``f"{i:05d}"``.
    With ``world_size > 1`` (a torchrun build) rank r writes the shards with i % world_size == r
    into the shared ``shards/`` folder and lists them in its own ``ranks/rank-r-of-W.json``;
    :func:`merge_rank_manifests` joins those into ``manifest.json`` once every rank is done.
    """

    def __init__(self, root, header: dict, resume: bool = False, rank: int = 0,
                 world_size: int = 1):
        self.root = Path(root)
        self.rank, self.world_size = rank, world_size
        self.manifest_path = (self.root / "manifest.json" if world_size == 1
                              else rank_manifest_path(self.root, rank, world_size))
        self.lock = StoreLock(self.root, "lock" if world_size == 1 else f"lock-rank-{rank}")
        self.header = json.loads(json.dumps(header))   # compare as JSON (tuples → lists)
        self.resume = resume
        self.shards: list[ShardInfo] = []
        self.previous: dict = {}
        """The manifest this writer resumed from (empty for a new store)."""

    def __enter__(self) -> StoreWriter:
        if self.root.exists() and not self.root.is_dir():
            raise GradprojError(f"{self.root}: exists and is not a directory")
        ours = ("lock", "shards", "ranks", "manifest.json", "index-", VERIFIED_FILE, "config.yaml")
        if self.root.exists() and any(not p.name.startswith(ours) for p in self.root.iterdir()):
            raise GradprojError(f"{self.root}: folder exists and is not a gradproj store")
        self.lock.__enter__()
        try:
            self._start()
        except BaseException:
            self.lock.__exit__()
            raise
        return self

    def _start(self) -> None:
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.manifest_path
        if self.world_size > 1 and (self.root / "manifest.json").is_file():
            existing = self.root / "manifest.json"
        if existing.is_file():
            old = json.loads(existing.read_text())
            self.previous = old
            if not self.resume:
                raise GradprojError(f"{self.root}: a store already exists here "
                                    "(use --resume to continue it, or another --out)")
            for key in self.header:
                if old.get(key) != self.header[key]:
                    raise IncompatibleStore(f"{self.root}: cannot resume: field '{key}' differs "
                                        "from the store's")
            self.shards = [ShardInfo(**s) for s in old["shards"]
                           if int(s["name"]) % self.world_size == self.rank]
            self._drop_uncommitted()
        self._write_manifest(complete=False)

    def _drop_uncommitted(self) -> None:
        """Remove this rank's shard files its manifest does not list (a build killed mid-shard)."""
        listed = {s.name for s in self.shards}
        for path in (self.root / "shards").iterdir():
            name = path.name.split(".")[0]
            if (name.isdigit() and int(name) % self.world_size == self.rank
                    and name not in listed):
                path.unlink()

    @property
    def rows_done(self) -> int:
        return sum(s.rows for s in self.shards)

    def committed(self) -> set[int]:
        """Indices of the shards this writer has committed."""
        return {int(s.name) for s in self.shards}

    def add_shard(self, grads: np.ndarray, rows: np.ndarray, index: int | None = None,
                  start: int | None = None) -> ShardInfo:
        """Commit shard ``index`` (default: the next one), float16 [n, k] features and their
        ROW_DTYPE records, holding store rows from ``start`` (default: after the last shard)."""
        if grads.dtype != np.float16 or rows.dtype != ROW_DTYPE or len(grads) != len(rows):
            raise ValueError("a shard needs float16 [n, k] grads and n ROW_DTYPE rows")
        index = len(self.shards) if index is None else index
        start = (self.shards[-1].stop if self.shards else 0) if start is None else start
        name = f"{index:05d}"
        paths = [self.root / "shards" / f"{name}.{kind}.npy" for kind in ("grads", "rows")]
        for path, arr in zip(paths, (grads, rows)):
            with atomic_path(path, durable=True) as tmp:
                np.save(tmp, arr, allow_pickle=False)
        info = ShardInfo(name, start, len(rows), sha256_file(paths[0]), sha256_file(paths[1]))
        self.shards.append(info)
        self._write_manifest(complete=False)
        return info

    def _write_manifest(self, complete: bool, extra: dict | None = None) -> None:
        manifest = dict(self.header, schema_version=SCHEMA_VERSION, complete=complete,
                        rows=self.rows_done, shards=[vars(s) for s in self.shards])
        manifest.update(extra or {})
        write_json_atomic(self.manifest_path, manifest)

    def finish(self, extra: dict | None = None) -> None:
        self._write_manifest(complete=True, extra=extra)

    def __exit__(self, *exc):
        self.lock.__exit__()


def merge_rank_manifests(root, world_size: int, extra: dict | None = None) -> None:
    """Join the per-rank manifests of a finished torchrun build into ``manifest.json``."""
    root = Path(root)
    parts = []
    for rank in range(world_size):
        path = rank_manifest_path(root, rank, world_size)
        if not path.is_file():
            raise GradprojError(f"{root}: rank {rank} wrote no manifest")
        parts.append(json.loads(path.read_text()))
        if not parts[-1]["complete"]:
            raise GradprojError(f"{root}: rank {rank} has not finished (rerun with --resume)")
    shards = sorted((s for p in parts for s in p["shards"]), key=lambda s: int(s["name"]))
    stop = 0
    for s in shards:
        if s["start"] != stop:
            raise CorruptStore(f"{root}: shard {s['name']} does not follow row {stop}")
        stop += s["rows"]
    manifest = {k: v for k, v in parts[0].items() if k not in ("shards", "rows", "timing")}
    timings = [p.get("timing") or {} for p in parts]
    timing = {"total": max(t.get("total", 0.0) for t in timings),
              **{k: sum(t.get(k, 0.0) for t in timings) for k in ("gradients", "projection")},
              "ranks": timings}
    manifest.update(complete=True, rows=stop, shards=shards, world_size=world_size,
                    timing=timing, projection_overflow_rows=sum(
                        int(p.get("projection_overflow_rows", 0)) for p in parts))
    manifest.update(extra or {})
    write_json_atomic(root / "manifest.json", manifest)


class Store:
    """A built store, opened read-only. Features are memory-mapped float16 [N, k]."""

    def __init__(self, root, verify: bool | str = "auto"):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise GradprojError(f"{self.root}: not a gradproj store (no manifest.json)")
        try:
            self.manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CorruptStore(f"{path}: invalid JSON ({err.msg})") from None
        version = self.manifest.get("schema_version")
        if version not in (1, SCHEMA_VERSION):
            raise IncompatibleStore(f"{path}: schema version {version} is not one this gradproj "
                                    f"reads (1, {SCHEMA_VERSION}): rebuild the store with "
                                    "gradproj build-store")
        self.manifest = upgrade_manifest(self.manifest)
        self.shards = [ShardInfo(**s) for s in self.manifest["shards"]]
        if verify not in (True, False, "auto"):
            raise ValueError(f"verify must be True, False or 'auto', got {verify!r}")
        self.hashed_files = 0
        """Files whose checksum this open computed (the others were unchanged since a check)."""
        self._check_files(verify)
        self._rows: np.ndarray | None = None

    def _check_files(self, verify: bool | str) -> None:
        stamps_path = self.root / VERIFIED_FILE
        old = {}
        if verify and stamps_path.is_file():
            try:
                old = json.loads(stamps_path.read_text())
            except (OSError, ValueError):
                old = {}
            if not isinstance(old, dict):
                old = {}
        stamps, now = {}, time.time_ns()
        for shard in self.shards:
            for kind, digest in (("grads", shard.grads_sha256), ("rows", shard.rows_sha256)):
                file = self.root / "shards" / f"{shard.name}.{kind}.npy"
                if not file.is_file():
                    raise CorruptStore(f"{self.root}: shard {shard.name} is missing ({file.name})")
                if not verify:
                    continue
                st = file.stat()
                stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest]
                if verify is True or old.get(file.name) != stamp:
                    self.hashed_files += 1
                    if sha256_file(file) != digest:
                        raise CorruptStore(f"{self.root}: shard {shard.name} is corrupt "
                                            f"({file.name}: checksum mismatch)")
                if st.st_mtime_ns < now - RACY_NS:
                    stamps[file.name] = stamp
        if verify and stamps != old:
            # a name of this process's own: ranks of a torchrun build open the store at once
            with contextlib.suppress(OSError):   # a read-only store: verified again next time
                write_atomic(stamps_path, json.dumps(stamps))

    @property
    def spec(self) -> ProjectorSpec:
        return ProjectorSpec.from_dict(self.manifest["projector"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return self.shards[-1].stop if self.shards else 0

    @property
    def k(self) -> int:
        return int(self.manifest["projector"]["k"])

    def shard_features(self, shard: ShardInfo) -> np.ndarray:
        """Memory-mapped float16 [rows, k] of one shard."""
        # copy-on-write map: writable views (torch.from_numpy needs them), the file is never changed
        return np.load(self.root / "shards" / f"{shard.name}.grads.npy", mmap_mode="c",
                       allow_pickle=False)

    @property
    def rows(self) -> np.ndarray:
        """All row records (ROW_DTYPE [N]) in store order."""
        if self._rows is None:
            parts = [current_rows(np.load(self.root / "shards" / f"{s.name}.rows.npy",
                                          allow_pickle=False)) for s in self.shards]
            self._rows = np.concatenate(parts) if parts else np.zeros(0, ROW_DTYPE)
        return self._rows

    def column(self, name: str) -> np.ndarray:
        """One field of the row records ([N], store order) without holding the others (the
        ids are 256 B a row) in memory: the row files are memory-mapped."""
        if self._rows is not None:
            return self._rows[name]
        parts = []
        for s in self.shards:
            rows = np.load(self.root / "shards" / f"{s.name}.rows.npy", mmap_mode="r",
                           allow_pickle=False)
            parts.append(np.array(rows[name]) if name in rows.dtype.names
                         else np.full(len(rows), np.nan, ROW_DTYPE[name]))
        return np.concatenate(parts) if parts else np.zeros(0, ROW_DTYPE[name])

    def ids(self) -> list[str]:
        return self.rows["id"].tolist()

    def blocks(self, max_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float16 [≤ max_rows, k] block) over the whole store, in order; only one
        block is read into memory at a time."""
        for shard in self.shards:
            feats = self.shard_features(shard)
            for i in range(0, shard.rows, max_rows):
                yield shard.start + i, np.asarray(feats[i:i + max_rows])

    def features(self) -> np.ndarray:
        """All features in memory, float16 [N, k] (use blocks() for stores larger than RAM)."""
        parts = [np.asarray(self.shard_features(s)) for s in self.shards]
        return np.concatenate(parts) if parts else np.zeros((0, self.k), np.float16)

    def status_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.column("status"), return_counts=True)
        return {STATUS_NAMES.get(int(c), str(c)): int(n) for c, n in zip(codes, counts)}

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def merge_stores(sources: list[Store], out) -> Store:
    """Join complete stores built with the same spec into a new store at ``out``: rows in the
    order of ``sources``, shards hard-linked where possible (else copied). Refuses different
    specs (naming the field) and pair ids present in two sources."""
    import shutil

    if not sources:
        raise GradprojError("store merge needs at least one store")
    first = sources[0].manifest
    seen: dict[str, str] = {}
    for st in sources:
        if not st.complete:
            raise GradprojError(f"{st.root}: store is incomplete (finish it with --resume)")
        for key in SPEC_FIELDS:
            if st.manifest.get(key) != first.get(key):
                raise IncompatibleStore(f"{st.root}: cannot merge: field '{key}' differs from "
                                    f"{sources[0].root}")
        for pid in st.ids():
            if pid in seen:
                raise GradprojError(f"{st.root}: cannot merge: pair id {pid!r} is also in "
                                    f"{seen[pid]}")
            seen[pid] = str(st.root)
    root = Path(out)
    if root.exists():
        raise GradprojError(f"{root}: already exists")
    header = {k: v for k, v in first.items()
              if k not in ("shards", "rows", "complete", "schema_version", "timing", "excluded",
                           "data_fingerprint", "world_size", "schema_version_on_disk")}
    header["merged_from"] = [str(st.root) for st in sources]
    header["data_fingerprint"] = hashlib.sha256(
        "".join(st.manifest["data_fingerprint"] for st in sources).encode()).hexdigest()[:16]
    header["excluded"] = {k: v for st in sources for k, v in st.manifest.get("excluded", {}).items()}
    with StoreWriter(root, header) as writer:
        for st in sources:
            for shard in st.shards:
                name = f"{len(writer.shards):05d}"
                for kind in ("grads", "rows"):
                    src = st.root / "shards" / f"{shard.name}.{kind}.npy"
                    dst = root / "shards" / f"{name}.{kind}.npy"
                    try:
                        os.link(src, dst)
                    except OSError:
                        shutil.copyfile(src, dst)
                writer.shards.append(ShardInfo(name, writer.rows_done, shard.rows,
                                               shard.grads_sha256, shard.rows_sha256))
        writer.finish()
    return Store(root)
