"""What a selection hands to a trainer: a ``datasets`` dataset of the kept pairs with their scores.

    OUT/selected/            datasets save_to_disk folder (+ README.md, the dataset card)
    OUT/selected.parquet     the same rows as one parquet file
    OUT/scores_all.parquet   every input pair: scores, ``kept`` and ``drop_reasons``

A row of ``selected`` is the pair in trl's explicit-prompt form and in the input's form —
``prompt``, ``chosen``, ``rejected`` as strings for plain-text input (an implicit HH-style prompt
split off as trl splits it), as ``{"role", "content"}`` message lists for conversational input —
plus ``id``, every other column of the input row as it was (``source``, ``score_chosen`` ...),
the scores computed (``irm``, ``lossdiff``, ``if``, ``tif``) and the summed reference log-probs
gradproj scored with, ``gradproj_ref_chosen_logps`` / ``gradproj_ref_rejected_logps``: per row,
null where the pair was truncated at max_length (trl truncates differently), absent for a
reference-free objective. They are not named ``ref_chosen_logps`` on purpose: trl 1.16 computes
those itself under ``DPOConfig(precompute_ref_log_probs=True)`` and refuses a dataset that already
has them (duplicated columns); with the pair formatted as trl formats it, trl's values equal
these (tested to rtol 1e-4).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import Selection
from gradproj.core.atomic import atomic_path
from gradproj.core.data import FieldMap, PreferencePair
from gradproj.core.errors import BadInput

SCORES = ("irm", "lossdiff", "if", "tif")
REFERENCE = ("ref_chosen_logps", "ref_rejected_logps")
"""The score table's reference columns, trl's names."""
EXPORTED = {name: "gradproj_" + name for name in REFERENCE}
"""Their names in ``selected/`` (trl 1.16 refuses a dataset that holds its own names)."""


def reference_columns_note(table: ScoreTable) -> str | None:
    """None when the reference columns go out with the kept rows, else why not."""
    if not all(c in table.columns for c in REFERENCE):
        return "the objective is reference-free (no reference pass was made)"
    return None


def selection_rows(pairs: list[PreferencePair], table: ScoreTable, ids: list[str],
                   fields: FieldMap = FieldMap(), reference: bool = True) -> list[dict]:
    """One row per id of ``ids`` (in that order): trl's columns in the input's form, the input's
    other columns, the scores and (``reference``) the reference log-prob columns, null for a
    pair that was truncated. Input columns with trl's reference names are left out (stale, and
    trl would refuse them)."""
    by_id = {p.id: p for p in pairs}
    pos = {i: n for n, i in enumerate(table.ids)}
    truncated = set(table.meta.get("truncated", ()))
    mapped = {fields.prompt, fields.chosen, fields.rejected, fields.id, *REFERENCE}
    scores = [c for c in SCORES if c in table.columns]
    rows = []
    for pid in ids:
        pair = by_id[pid]
        row = {"id": pid, **pair.trl_row()}
        row.update({k: v for k, v in pair.record.items() if k not in mapped and k not in row})
        for name in scores:
            row[name] = _finite(table[name][pos[pid]])
        if reference:
            for name in REFERENCE:
                row[EXPORTED[name]] = (None if pid in truncated
                                       else _finite(table[name][pos[pid]]))
        rows.append(row)
    return rows


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _card(info: dict, n_rows: int, note: str | None, table: ScoreTable, kept: list[str]) -> str:
    pos = {i: n for n, i in enumerate(table.ids)}
    lines = ["---", "tags: [gradproj, dpo, preference-data-selection]", "---", "",
             f"# Pairs selected by gradproj ({info['method']})", "",
             f"{n_rows} of {info['n_scorable']} scorable pairs kept "
             f"({info['keep_fraction']:.1%}; asked for keep {info['keep']}); "
             f"{info['n']} pairs in the input, {len(info.get('unscorable', {}))} unscorable.", "",
             "## Settings", "", "```json",
             json.dumps({k: info[k] for k in ("objective", "settings") if k in info}, indent=2),
             "```", "", "## Scores of the kept pairs", "",
             "| score | mean | std | min | max |", "|---|---|---|---|---|"]
    for name in (c for c in SCORES if c in table.columns):
        v = np.array([table[name][pos[i]] for i in kept], dtype=float)
        v = v[np.isfinite(v)]
        if len(v):
            lines.append(f"| {name} | {v.mean():.4g} | {v.std():.4g} | {v.min():.4g} | "
                         f"{v.max():.4g} |")
    lines += ["", "## Columns", "",
              "`prompt`, `chosen`, `rejected`: the pair in trl's explicit-prompt form, in the "
              "input's form (strings stay strings, messages stay messages); `id`; the input's "
              "other columns unchanged; the scores above."]
    if note is None:
        lines += ["", "`gradproj_ref_chosen_logps`, `gradproj_ref_rejected_logps`: summed "
                      "reference log-probs of the responses (the base model, adapter off) that "
                      "gradproj scored with, in the tokens trl trains on. Rule: a value per row, "
                      "null where the pair was truncated at max_length (trl truncates "
                      "differently, so its value would differ). trl 1.16 computes its own "
                      "`ref_chosen_logps` / `ref_rejected_logps` under "
                      "`precompute_ref_log_probs=True` (one reference pass over these rows) and "
                      "refuses a dataset that already holds columns of those names."]
    else:
        lines += ["", f"No reference log-prob columns: {note}."]
    return "\n".join(lines) + "\n"


def write_selection_outputs(out, pairs: list[PreferencePair], table: ScoreTable,
                            sel: Selection, info: dict, fields: FieldMap = FieldMap()) -> dict:
    """Write OUT/selected/ (+ card), OUT/selected.parquet and OUT/scores_all.parquet; returns
    what was written (and why the reference columns are absent, if they are)."""

    out = Path(out)
    note = reference_columns_note(table)
    rows = selection_rows(pairs, table, sel.kept, fields, reference=note is None)
    dataset = _dataset(rows)
    tmp = out / "selected.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    (tmp / "README.md").write_text(_card(info, len(rows), note, table, sel.kept))
    shutil.rmtree(out / "selected", ignore_errors=True)
    tmp.replace(out / "selected")
    _parquet(dataset, out / "selected.parquet")
    everyone = selection_rows(pairs, table, table.ids, fields, reference=False)
    kept = set(sel.kept)
    for row in everyone:
        row["kept"] = row["id"] in kept
        row["drop_reasons"] = sel.dropped.get(row["id"], [])
    _parquet(_dataset(everyone), out / "scores_all.parquet")
    return {"rows": len(rows), "reference_columns": note is None, "reference_note": note}


def _dataset(rows: list[dict]):
    """A Dataset of rows whose columns may differ (a column missing in a row is None there;
    ``Dataset.from_list`` alone would take the columns of the first row only)."""
    import datasets

    names = list(dict.fromkeys(k for row in rows for k in row))
    return datasets.Dataset.from_dict({k: [row.get(k) for row in rows] for k in names})


def _parquet(dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        dataset.to_parquet(str(tmp))


def load_selection(out):
    """The kept pairs of a ``gradproj select`` folder as a ``datasets.Dataset``, ready for
    ``trl.DPOTrainer`` as it is (``precompute_ref_log_probs`` either way): prompt/chosen/rejected
    in the input's form, the scores, and gradproj's reference log-probs."""
    import datasets

    path = Path(out) / "selected"
    if not (path / "dataset_info.json").is_file():
        raise BadInput(f"{out}: no selected/ dataset (run gradproj select into this folder)")
    return datasets.load_from_disk(str(path))


def push_selection(out, repo: str) -> None:
    """Push OUT/selected to the hub as ``repo``; one line when the hub cannot be reached."""
    dataset = load_selection(out)
    try:
        dataset.push_to_hub(repo)
    except Exception as err:   # noqa: BLE001 - any hub failure becomes one user-facing line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BadInput(f"--push-to-hub {repo}: cannot push to the hub ({first})") from None
