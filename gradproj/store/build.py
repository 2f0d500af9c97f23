"""Build a gradient store: per-pair LoRA gradients of the loss, projected, written in shards.

For every pair d the store holds P g_d (float16, [k]) where g_d = ∇_θ ℓ(θ; d) over the LoRA
parameters (``grad_type="sgd"``) or its Adam-preconditioned form m'/(√v' + ε) (``"adam"``, from
the optimizer state saved by ``gradproj train`` next to the adapter), and P the projector of
``gradproj.projection``. Rows follow the order of the input pairs (minus pairs excluded by
tokenization, listed in the manifest); shard boundaries depend only on ``shard_size``, so a
resumed build equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from gradproj import __version__
from gradproj.core.data import PreferencePair, data_fingerprint
from gradproj.core.errors import GradprojError
from gradproj.core.memory import release_heap
from gradproj.core.model import LoadedModel
from gradproj.core.objectives import Objective, PreferenceSettings
from gradproj.core.settings import Settings, at_least_one, non_negative, setting
from gradproj.core.tokens import token_batches
from gradproj.gradients.perpair import PerPairGradients, adam_precondition, lora_layout
from gradproj.projection.factory import make_projector
from gradproj.projection.spec import KINDS
from gradproj.store.manifest import ROW_DTYPE, STATUS, rank_manifest_path
from gradproj.store.shards import Store, StoreWriter, merge_rank_manifests
from gradproj.training.train import check_adapter_objective, load_optimizer_state

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StoreSettings(Settings):
    """How to compute and store the features; all of it goes into the manifest (the objective
    and max_length come from PreferenceSettings, shared with training and scoring)."""

    proj_dim: int = setting(8192, "k, the projected dimension.", check=at_least_one)
    proj_kind: str = setting("rademacher", "Projection: rademacher, gaussian, sjlt (ours, "
                                           "device-independent) or TRAK's trak-basic, trak-cuda.",
                             choices=KINDS)
    seed: int = setting(0, "Projection seed: R is a pure function of (seed, parameter, row, "
                           "column).")
    grad_type: str = setting("sgd", "sgd: the plain gradient; adam: LESS-style m'/(sqrt(v')+eps) "
                                    "from the adapter's optimizer state.", choices=("sgd", "adam"))
    batch_size: int = setting(8, "Pairs per forward/backward pass.", check=at_least_one)
    proj_batch: int = setting(64, "Pairs buffered before a projection call (amortises "
                                  "generating R).", check=at_least_one)
    shard_size: int = setting(1024, "Rows per shard file; the unit of resume.",
                              check=at_least_one)
    proj_cache_mb: float = setting(0.0, "Memory budget for caching blocks of R across calls "
                                        "(0: generate on the fly).", check=non_negative)
    sjlt_s: int = setting(4, "Non-zeros per input coordinate of the sparse (sjlt) projection.",
                          check=at_least_one)


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else str(sorted(
        tokenizer.get_vocab().items()))).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    return h.hexdigest()[:16]


def store_header(loaded: LoadedModel, settings: StoreSettings, pref: PreferenceSettings,
                 spec_dict: dict, data_fp: str) -> dict:
    """The manifest fields a query must match (see gradproj.attribution.influence)."""
    ms = loaded.settings
    return {
        "gradproj_version": __version__,
        "model": {"name": ms.model, "dtype": loaded.dtype_name,
                  "base_fingerprint": loaded.base_fingerprint,
                  "lora": asdict(ms.lora) if ms.adapter is None else None},
        "adapter": {"path": ms.adapter, "fingerprint": loaded.adapter_fingerprint()},
        "tokenizer_fingerprint": tokenizer_fingerprint(loaded.tokenizer),
        "data_fingerprint": data_fp,
        "objective": pref.objective().settings(),
        "preference": pref.to_dict(),
        "grad_type": settings.grad_type,
        "max_length": pref.max_length,
        "max_prompt_length": pref.max_prompt_length,
        "chat_template": pref.template_record(loaded.tokenizer),
        "projector": spec_dict,
        "storage_dtype": "float16",
        "settings": settings.to_dict(),
    }


def manifest_settings(manifest: dict) -> tuple[StoreSettings, PreferenceSettings]:
    """The store and preference settings a store was built with."""
    return (StoreSettings.from_dict(manifest["settings"]),
            PreferenceSettings.from_dict(manifest["preference"]))


class FeatureComputer:
    """Per-pair gradients → (optional Adam preconditioning) → projection, for batches of pairs."""

    def __init__(self, loaded: LoadedModel, settings: StoreSettings, objective: Objective,
                 device=None):
        self.loaded, self.settings = loaded, settings
        layout = lora_layout(loaded.model)
        self.projector = make_projector(settings.proj_kind, settings.proj_dim, layout,
                                        seed=settings.seed, sjlt_s=settings.sjlt_s,
                                        cache_mb=settings.proj_cache_mb,
                                        device=device or loaded.device)
        self.grads = PerPairGradients(loaded.model, objective,
                                      checkpointing=loaded.settings.grad_checkpointing)
        self.adam = None
        if settings.grad_type == "adam":
            if loaded.settings.adapter is None:
                raise GradprojError("--grad-type adam needs --adapter, a folder made by "
                                    "gradproj train (it holds the optimizer state)")
            self.adam = load_optimizer_state(loaded.settings.adapter)
        self.seconds = {"gradients": 0.0, "projection": 0.0}
        self.overflowed = 0
        """Rows whose finite gradient projected to a value the storage dtype cannot hold."""

    def features(self, pairs, dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
        """(projected features [n, k] in ``dtype``, ROW_DTYPE [n] records) of tokenized pairs,
        in the order of ``pairs`` whatever the batching (``max_tokens`` of the model settings
        groups pairs by length; each batch's rows are scattered back to their positions).

        The store keeps float16; validation queries use float32.
        """
        s, pad = self.settings, self.loaded.tokenizer.pad_token_id
        rows = np.zeros(len(pairs), ROW_DTYPE)
        out = np.zeros((len(pairs), s.proj_dim), dtype)
        buffer: list[dict[str, torch.Tensor]] = []
        places: list[list[int]] = []   # positions in ``pairs`` of each buffered batch

        def flush():
            if not buffer:
                return
            t = time.perf_counter()
            where = np.array([p for group in places for p in group], dtype=np.int64)
            merged = {n: torch.cat([b[n] for b in buffer]) for n in buffer[0]}
            proj = self.projector.project(merged).float().cpu().numpy()
            with np.errstate(over="ignore", invalid="ignore"):
                cast = proj.astype(dtype)
            # a projected value beyond float16's range (65504) or a non-finite projection: the
            # row is flagged like a non-finite gradient and stored as zeros, never as inf
            bad = ~np.isfinite(cast).all(axis=1)
            if bad.any():
                cast[bad] = 0
                rows["status"][where[bad]] = STATUS["non-finite"]
                self.overflowed += int(bad.sum())
                log.warning("%d pair(s): projected gradient not finite in %s (|value| > %g?); "
                            "flagged non-finite", int(bad.sum()), np.dtype(dtype).name,
                            float(np.finfo(dtype).max))
            out[where] = cast
            buffer.clear()
            places.clear()
            self.seconds["projection"] += time.perf_counter() - t

        for where, batch in token_batches(pairs, s.batch_size, pad,
                                          self.loaded.settings.max_tokens):
            t = time.perf_counter()
            pg = self.grads(batch.to(self.loaded.device))
            g = pg.grads
            if self.adam is not None:   # a zeroed pair would become β1·m/(√v' + ε): zero it again
                g = {n: torch.where(pg.finite[:, None].to(v.device), v, 0.0)
                     for n, v in adam_precondition(pg.grads, *self.adam).items()}
            self.seconds["gradients"] += time.perf_counter() - t
            lp = pg.logprobs
            for j, i in enumerate(where):
                r = rows[i]
                r["id"], r["truncated"] = pairs[i].id, pairs[i].truncated
                r["status"] = STATUS["ok"] if bool(pg.finite[j]) else STATUS["non-finite"]
                r["loss"] = float(pg.losses[j])
                r["policy_chosen"], r["policy_rejected"] = float(lp.policy_chosen[j]), float(
                    lp.policy_rejected[j])
                r["ref_chosen"], r["ref_rejected"] = float(lp.ref_chosen[j]), float(
                    lp.ref_rejected[j])
                r["len_chosen"], r["len_rejected"] = float(lp.len_chosen[j]), float(
                    lp.len_rejected[j])
            buffer.append({n: v.detach() for n, v in g.items()})
            places.append(where)
            del pg, g
            if sum(len(next(iter(b.values()))) for b in buffer) >= s.proj_batch:
                flush()
            release_heap()
        flush()
        release_heap()
        rows["norm"] = np.linalg.norm(out.astype(np.float32), axis=1)
        return out, rows

    def close(self):
        self.grads.close()


def build_store(loaded: LoadedModel, pairs: list[PreferencePair], settings: StoreSettings,
                out, *, pref: PreferenceSettings = PreferenceSettings(), resume: bool = False,
                progress: bool = True, rank: int = 0, world_size: int = 1, barrier=None,
                force_objective: bool = False) -> Store:
    """Write the store of ``pref``'s objective for ``pairs`` at ``out`` (continuing a partial
    one with ``resume``). An adapter trained with another objective is refused unless
    ``force_objective``.

    In a torchrun build every rank calls this with its ``rank``, the ``world_size`` and a
    ``barrier`` callable: rank r computes shards i with i % world_size == r (shard boundaries do
    not depend on the number of ranks, so the store equals a one-process build), and rank 0 joins
    the per-rank manifests once all are done. Only rank 0 shows progress, for all ranks.
    """
    from tqdm.auto import tqdm

    objective = pref.objective()
    check_adapter_objective(loaded.settings.adapter, objective, force_objective,
                            pref.template_record(loaded.tokenizer))
    tok = pref.tokenize(pairs, loaded.tokenizer)
    too_long = [p.id for p in tok.pairs if len(p.id) > ROW_DTYPE["id"].itemsize // 4]
    if too_long:
        raise GradprojError(f"pair id {too_long[0]!r} is longer than 64 characters")
    computer = FeatureComputer(loaded, settings, objective)
    header = store_header(loaded, settings, pref, computer.projector.spec.to_dict(),
                          data_fingerprint(pairs))
    header["excluded"] = tok.excluded
    start = time.perf_counter()
    n_shards = -(-len(tok.pairs) // settings.shard_size)
    mine = [i for i in range(n_shards) if i % world_size == rank]
    root = Path(out)
    try:
        with StoreWriter(root, header, resume=resume, rank=rank,
                         world_size=world_size) as writer:
            bar = tqdm(total=len(tok.pairs), desc="build-store", unit="pair",
                       disable=not progress or rank != 0, leave=False)
            bar.update(_rows_done_all(root, writer, world_size))
            for i in mine:
                if i in writer.committed():
                    continue
                lo = i * settings.shard_size
                feats, rows = computer.features(tok.pairs[lo:lo + settings.shard_size])
                writer.add_shard(feats, rows, index=i, start=lo)
                bar.update(_rows_done_all(root, writer, world_size) - bar.n)
            overflowed = computer.overflowed + int(
                writer.previous.get("projection_overflow_rows", 0))   # + before a resume
            writer.finish(extra={"timing": dict(computer.seconds,
                                                total=time.perf_counter() - start),
                                 "projection_overflow_rows": overflowed})
        if world_size > 1:
            barrier()
            if rank == 0:
                merge_rank_manifests(root, world_size)
            barrier()
        bar.update(len(tok.pairs) - bar.n)
        bar.close()
    finally:
        computer.close()
    return Store(out)


def _rows_done_all(root: Path, writer: StoreWriter, world_size: int) -> int:
    """Rows committed by every rank so far (read from the rank manifests on disk)."""
    if world_size == 1:
        return writer.rows_done
    total = 0
    for r in range(world_size):
        try:
            total += json.loads(rank_manifest_path(root, r, world_size).read_text())["rows"]
        except (OSError, ValueError, KeyError):
            pass
    return total
