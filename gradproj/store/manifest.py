"""The store's on-disk schema: the manifest's version and upgrade, the per-row record, the row
status codes, the fields that make two stores compatible, and where a torchrun rank's manifest
lives. :mod:`gradproj.store.shards` reads and writes stores by it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCHEMA_VERSION = 2
"""2: rows hold the response lengths, the manifest the objective record (1 still opens)."""
STATUS = {"ok": 0, "non-finite": 1}
STATUS_NAMES = {v: k for k, v in STATUS.items()}
ROW_DTYPE = np.dtype([
    ("id", "U64"),                 # pair id
    ("status", "u1"),              # STATUS code
    ("truncated", "?"),            # some tokens were cut to fit max_length
    ("norm", "f4"),                # L2 norm of the stored (float16) projected row
    ("loss", "f4"),                # ℓ(θ; d) at the store's adapter
    ("policy_chosen", "f4"),       # log π_θ(y_w|x)
    ("policy_rejected", "f4"),     # log π_θ(y_l|x)
    ("ref_chosen", "f4"),          # log π_ref(y_w|x)
    ("ref_rejected", "f4"),        # log π_ref(y_l|x)
    ("len_chosen", "f4"),          # |y_w|, response tokens (length-normalised objectives)
    ("len_rejected", "f4"),        # |y_l|
])
ROW_DTYPE_V1 = np.dtype(ROW_DTYPE.descr[:-2])


def current_rows(rows: np.ndarray) -> np.ndarray:
    """Row records in ROW_DTYPE: schema-1 rows get NaN response lengths."""
    if rows.dtype == ROW_DTYPE:
        return rows
    out = np.zeros(len(rows), ROW_DTYPE)
    for name in rows.dtype.names:
        out[name] = rows[name]
    out["len_chosen"] = out["len_rejected"] = np.nan
    return out


def upgrade_manifest(manifest: dict) -> dict:
    """A schema-1 manifest in schema-2 form: its ``loss`` {name, beta} becomes the objective
    record (DPO or SLiC with δ = 1, the only ones schema 1 could hold); loss, β and max_length
    leave the store settings for the preference settings."""
    if manifest.get("schema_version") != 1:
        return manifest
    m = dict(manifest)
    loss = m.pop("loss", {"name": "dpo", "beta": 0.1})
    params = {"delta": 1.0} if loss["name"] == "slic" else {}
    m["objective"] = {"name": loss["name"], "beta": float(loss["beta"]), "params": params}
    m["preference"] = {"loss": loss["name"], "beta": float(loss["beta"]),
                       "loss_param": [f"{k}={v}" for k, v in params.items()],
                       "max_length": m.get("max_length")}
    m["settings"] = {k: v for k, v in m.get("settings", {}).items()
                     if k not in ("loss", "beta", "max_length")}
    m["schema_version_on_disk"] = 1
    return m


SPEC_FIELDS = ("projector", "model", "adapter", "tokenizer_fingerprint", "objective", "grad_type",
               "max_length", "max_prompt_length", "chat_template", "storage_dtype")
"""The manifest fields that make stores compatible: a merge and a query must match them all."""


def rank_manifest_path(root: Path, rank: int, world_size: int) -> Path:
    return root / "ranks" / f"rank-{rank:03d}-of-{world_size:03d}.json"
