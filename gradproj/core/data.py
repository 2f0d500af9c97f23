"""Reading DPO preference pairs into one canonical chat form, and writing selected pairs back.

Inputs: ``.jsonl`` (or gzipped, ``.jsonl.gz``), ``.json``, ``.csv``, ``.parquet``, a directory
written by
``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or a hub id ``owner/name``.
Each record is either *plain text* (``prompt``, ``chosen``, ``rejected`` are strings) or
*conversational* (``chosen`` and ``rejected`` are lists of ``{"role", "content"}`` messages), the
two forms trl knows. The prompt may be *implicit*, as in Anthropic HH-RLHF (only ``chosen`` and
``rejected``, each the whole transcript): it is then their shared prefix, split exactly as trl's
``extract_prompt`` splits it (characters for strings, whole messages for lists; a space just before
the first difference goes to the responses). Both forms become a :class:`PreferencePair` of message
tuples, so the plain record ``{"prompt": "P", "chosen": "C", "rejected": "R"}`` and its chat twin
get the same messages and id; ``conversational`` remembers the form, which decides the tokenization
(trl's rule: the chat template for conversational pairs only) and the form written back.

Locations in errors and in ``PreferencePair.source`` are ``path:N`` where N is the 1-based line for
``.jsonl`` (blank lines count), and the 1-based record/row number for everything else; for
``.csv`` N counts data rows only (the header row is not counted).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from gradproj.core.atomic import write_atomic
from gradproj.core.errors import GradprojError, InputError
from gradproj.core.settings import Settings, setting

Message = dict  # {"role": str, "content": str}
Rows = Iterator[tuple[int, Any]]  # (1-based line/row number, record)

SUPPORTED_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_BAD_SHAPE = "must be a string or a list of {role, content} messages"


@dataclass(frozen=True)
class FieldMap:
    """Names of the input columns; remappable from the CLI (e.g. --field chosen=better)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    id: str = "id"

    @classmethod
    def parse(cls, specs: Sequence[str]) -> FieldMap:
        """Build a map from ``NAME=COLUMN`` specs such as ``["chosen=better", "id=uid"]``.

        A spec without ``=``, with an empty side, or naming an unknown field raises
        :class:`GradprojError` quoting the spec.
        """
        known = [f.name for f in dataclass_fields(cls)]
        columns: dict[str, str] = {}
        for spec in specs:
            key, sep, column = spec.partition("=")
            key, column = key.strip(), column.strip()
            if not sep or not key or not column:
                raise GradprojError(f"bad field mapping '{spec}': expected NAME=COLUMN, "
                                    f"e.g. chosen=better")
            if key not in known:
                raise GradprojError(f"bad field mapping '{spec}': unknown field '{key}' "
                                    f"(expected one of {', '.join(known)})")
            columns[key] = column
        return cls(**columns)


_DEFAULT_FIELDS = FieldMap()


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair in canonical chat form.

    ``prompt`` holds the shared prompt messages; ``chosen`` and ``rejected`` the response messages
    after it (normally one assistant message each).  ``id`` is the record's own id field
    (``str(value)``) when present and not null/empty, else :func:`content_id`.  ``source`` is
    ``path:N`` (see the module docstring) and ``record`` the original input record, untouched.
    """

    id: str
    prompt: tuple[Message, ...]
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]
    source: str
    record: Mapping
    conversational: bool = True
    """The input's form: message lists (True) or plain strings (False)."""

    def __hash__(self) -> int:  # messages are dicts, so the generated hash would fail
        return hash((self.id, self.source))

    def trl_row(self) -> dict:
        """``prompt``/``chosen``/``rejected`` in trl's explicit-prompt form, in the input's form:
        message lists for a conversational pair, strings for a plain-text one."""
        if not self.conversational:
            return {"prompt": self.prompt_text, "chosen": self.chosen_text,
                    "rejected": self.rejected_text}
        return {"prompt": [dict(m) for m in self.prompt], "chosen": [dict(m) for m in self.chosen],
                "rejected": [dict(m) for m in self.rejected]}

    @property
    def prompt_text(self) -> str:
        """Content of the last prompt message."""
        return self.prompt[-1]["content"] if self.prompt else ""

    @property
    def chosen_text(self) -> str:
        """Content of the last chosen response message."""
        return self.chosen[-1]["content"]

    @property
    def rejected_text(self) -> str:
        """Content of the last rejected response message."""
        return self.rejected[-1]["content"]


def content_id(prompt: Sequence[Mapping], chosen: Sequence[Mapping],
               rejected: Sequence[Mapping]) -> str:
    """First 16 hex chars of the sha256 of the canonical JSON of the three message lists.

    Only ``role`` and ``content`` of each message count; the JSON uses sorted keys, compact
    separators and ``ensure_ascii=False``.
    """
    canonical = [[{"role": m["role"], "content": m["content"]} for m in messages]
                 for messages in (prompt, chosen, rejected)]
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_pairs(source: str | os.PathLike, fields: FieldMap = _DEFAULT_FIELDS,
               split: str = "train") -> list[PreferencePair]:
    """Load and validate every preference pair of a file, a saved dataset or a hub dataset.

    ``split`` picks the split of a saved ``DatasetDict`` or of a hub dataset.  The first bad
    record raises :class:`InputError` (path, line/row and field); nothing is returned then.
    """
    name = os.fsdecode(source)
    path = Path(name)
    suffix = "".join(path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]).lower()
    if path.is_dir():
        rows, unit = _read_saved_dataset(path, name, split), "row"
    elif path.exists():
        readers: dict[str, tuple[Callable[[Path, str], Rows], str]] = {
            ".jsonl": (_read_jsonl, "line"), ".jsonl.gz": (_read_jsonl, "line"),
            ".json": (_read_json, "record"),
            ".csv": (_read_csv, "row"), ".parquet": (_read_parquet, "row")}
        if suffix not in readers:
            raise InputError(f"unsupported file type '{suffix or path.name}' (supported: "
                             f"{', '.join(SUPPORTED_EXTENSIONS)}, or a directory written by "
                             f"datasets' save_to_disk)", name)
        reader, unit = readers[suffix]
        rows = reader(path, name)
    elif suffix not in SUPPORTED_EXTENSIONS and _HUB_ID.fullmatch(name):
        rows, unit = _read_hub_dataset(name, split), "row"
    else:
        raise InputError("no such file", name)
    return _build(rows, fields, name, unit)


def pairs_from_records(records: Iterable[Mapping], fields: FieldMap = _DEFAULT_FIELDS,
                       origin: str = "<records>") -> list[PreferencePair]:
    """Validate in-memory records (numbered from 1) into pairs; ``origin`` names them in errors."""
    return _build(enumerate(records, 1), fields, origin, "record")


def write_pairs_jsonl(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> None:
    """Write each pair's original ``record`` as one JSON line, atomically.

    (:func:`gradproj.core.atomic.write_atomic`: on any failure ``path`` is left as it was.)
    """
    write_atomic(path, "".join(_record_json(pair) + "\n" for pair in pairs), durable=True)


# --- validation -------------------------------------------------------------------------------

def _build(rows: Iterable[tuple[int, Any]], fields: FieldMap, origin: str,
           unit: str) -> list[PreferencePair]:
    """Turn numbered records into pairs, raising on the first bad record or duplicate id."""
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for number, record in rows:
        if not isinstance(record, Mapping):
            raise InputError(f"expected a record of named fields, got {type(record).__name__}",
                             origin, number)
        pair, own_id = _make_pair(record, fields, origin, number)
        if pair.id in seen:
            if own_id:
                raise InputError(f"duplicates the id of {unit} {seen[pair.id]}", origin, number,
                                 fields.id)
            raise InputError(f"duplicates the pair on {unit} {seen[pair.id]} "
                             f"(same prompt, chosen and rejected)", origin, number)
        seen[pair.id] = number
        if pairs and pair.conversational != pairs[0].conversational:
            forms = {True: "conversational (message lists)", False: "plain text (strings)"}
            raise InputError(f"is {forms[pair.conversational]} but {unit} "
                             f"{pairs[0].source.rpartition(':')[2]} is "
                             f"{forms[pairs[0].conversational]}: one dataset holds one form "
                             f"(trl formats a dataset by its first row)", origin, number,
                             fields.chosen)
        pairs.append(pair)
    if not pairs:
        raise InputError("no preference pairs (the dataset is empty)", origin)
    return pairs


def _make_pair(record: Mapping, fields: FieldMap, origin: str,
               number: int) -> tuple[PreferencePair, bool]:
    """Canonicalise one record; returns the pair and whether its id came from the record."""

    def fail(message: str, field: str | None = None) -> InputError:
        return InputError(message, origin, number, field)

    chosen = _field(record, fields.chosen, fail)
    rejected = _field(record, fields.rejected, fail)
    conversational = not isinstance(chosen, str)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise fail(f"must have the same form as '{fields.chosen}' "
                   f"(both strings or both message lists)", fields.rejected)
    implicit = not conversational and record.get(fields.prompt) is None
    if not conversational:
        if implicit:        # implicit prompt (HH-RLHF): trl's split
            for name, whole in ((fields.chosen, chosen), (fields.rejected, rejected)):
                if not whole.strip():
                    raise fail("is empty", name)
            prompt_text, chosen, rejected = split_implicit_prompt(chosen, rejected)
            if not prompt_text.strip():
                raise fail(f"is missing, and '{fields.chosen}'/'{fields.rejected}' share no "
                           f"prompt text (an implicit prompt is their common prefix)",
                           fields.prompt)
            prompt = ({"role": "user", "content": prompt_text},)
        else:
            prompt = _prompt_field(record, fields.prompt, fail, "")
            if len(prompt) != 1 or prompt[0]["role"] != "user":
                raise fail("must be a string when 'chosen'/'rejected' are strings", fields.prompt)
        chosen = ({"role": "assistant", "content": chosen},)
        rejected = ({"role": "assistant", "content": rejected},)
    elif isinstance(record.get(fields.prompt), (list, tuple)):
        prompt = _prompt_field(record, fields.prompt, fail, "")   # explicit: trl keeps it as is
    else:
        prompt, chosen_rest, rejected_rest = split_implicit_prompt(chosen, rejected)
        if prompt:
            chosen, rejected = chosen_rest, rejected_rest
        else:
            hint = f" and '{fields.chosen}'/'{fields.rejected}' share no prompt messages"
            prompt = _prompt_field(record, fields.prompt, fail, hint)
    if conversational:
        for name, response in ((fields.chosen, chosen), (fields.rejected, rejected)):
            if response[-1]["role"] != "assistant":
                raise fail(f"must end on an assistant message, ends on a "
                           f"'{response[-1]['role']}' message (trl would train on it as the "
                           f"completion)", name)
    for name, response in ((fields.chosen, chosen), (fields.rejected, rejected)):
        # a transcript whose last answer is empty (4 of HH-RLHF's harmless test rows) is kept:
        # the field is not empty, and trl trains on the response as it is (its EOS)
        if not implicit and not response[-1]["content"].strip():
            raise fail("is empty", name)
    if chosen == rejected:
        raise fail(f"is identical to '{fields.chosen}'", fields.rejected)

    raw_id = record.get(fields.id)
    own_id = raw_id is not None and raw_id != ""
    pair_id = str(raw_id) if own_id else content_id(prompt, chosen, rejected)
    pair = PreferencePair(pair_id, prompt, chosen, rejected, f"{origin}:{number}", record,
                          conversational)
    return pair, own_id


def split_implicit_prompt(chosen: Sequence, rejected: Sequence):
    """(prompt, chosen, rejected) of an implicit-prompt pair, exactly as trl's ``extract_prompt``.

    The prompt is the longest common prefix of ``chosen`` and ``rejected`` (characters of strings,
    messages of lists), stopping before the last element of the shorter one; for strings, a space
    just before the first difference is left to the responses (``"… Assistant: Yes"`` splits into
    ``"… Assistant:"`` and ``" Yes"``).
    """
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx and chosen[idx - 1] == " ":   # trl also looks at [-1] when idx == 0
                idx -= 1
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def _field(record: Mapping, field: str, fail: Callable[..., InputError],
           hint: str = "") -> str | tuple[Message, ...]:
    """A string field as is, or a message list as a tuple of plain {role, content} dicts.

    An absent key or a null value is 'missing'; an empty list is 'empty'.
    """
    value = record.get(field)
    if value is None:
        raise fail("is missing" + hint, field)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and not value:
        raise fail("is empty", field)
    if isinstance(value, (list, tuple)) and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value):
        return tuple({"role": m["role"], "content": m["content"]} for m in value)
    raise fail(_BAD_SHAPE, field)


def _prompt_field(record: Mapping, field: str, fail: Callable[..., InputError],
                  hint: str) -> tuple[Message, ...]:
    """The prompt field as messages: a string becomes one user message."""
    prompt = _field(record, field, fail, hint)
    if isinstance(prompt, str):
        prompt = ({"role": "user", "content": prompt},)
    if not any(m["content"].strip() for m in prompt):
        raise fail("is empty", field)
    return prompt


# --- readers ----------------------------------------------------------------------------------

def _read_jsonl(path: Path, name: str) -> Rows:
    import gzip

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InputError("line is not valid UTF-8", name, number) from None
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"invalid JSON ({exc.msg} at column {exc.colno})",
                                 name, number) from None
            if not isinstance(value, dict):
                raise InputError("expected a JSON object", name, number)
            yield number, value


def _read_json(path: Path, name: str) -> Rows:
    try:
        value = json.loads(_decode(path.read_bytes(), name))
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc})", name) from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else value
    if not isinstance(value, list):
        raise InputError('expected a JSON list of objects, or an object with one list value '
                         'such as {"data": [...]}', name)
    for number, item in enumerate(value, 1):
        if not isinstance(item, dict):
            raise InputError("expected a JSON object", name, number)
        yield number, item


def _read_csv(path: Path, name: str) -> Rows:
    reader = csv.DictReader(io.StringIO(_decode(path.read_bytes(), name), newline=""))
    number = 0
    try:
        for number, row in enumerate(reader, 1):
            if None in row:
                raise InputError("has more values than the header has columns", name, number)
            yield number, row
    except csv.Error as exc:
        raise InputError(f"malformed CSV ({exc})", name, number + 1) from None


def _read_parquet(path: Path, name: str) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"not a readable Parquet file ({_short(exc)})", name) from None
    yield from enumerate(table.to_pylist(), 1)


def _read_saved_dataset(path: Path, name: str, split: str) -> Rows:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise InputError(f"not a dataset written by save_to_disk ({_short(exc)})", name) from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise InputError(f"no split '{split}' (available: {', '.join(dataset)})", name)
        dataset = dataset[split]
    yield from enumerate(dataset, 1)


def _read_hub_dataset(name: str, split: str) -> Rows:
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        dataset = datasets.load_dataset(name, split=split)
    except ConnectionError as exc:
        raise InputError(f"cannot load dataset '{name}': not a local file and the hub is "
                         f"unreachable ({_short(exc)})") from None
    except (OSError, ValueError, DatasetsError) as exc:
        raise InputError(f"cannot load dataset '{name}': not a local file, and the hub "
                         f"could not provide it ({_short(exc)})") from None
    yield from enumerate(dataset, 1)


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text of a whole file (a BOM is dropped); the error names the file line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"not valid UTF-8 (at line {line} of the file)", name) from None


def _short(exc: BaseException) -> str:
    """First line of an exception message, at most 200 characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _plain(value: Any) -> Any:
    """JSON stand-ins for values that parquet/datasets records may hold."""
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON serialisable")


def _record_json(pair: PreferencePair) -> str:
    try:
        return json.dumps(dict(pair.record), ensure_ascii=False, default=_plain)
    except (TypeError, ValueError) as exc:
        raise GradprojError(f"{pair.source}: cannot write the record as JSON ({exc})") from None


def data_fingerprint(pairs: list[PreferencePair]) -> str:
    """sha256 of the ordered pair ids (ids are content hashes unless the data gives its own)."""
    return hashlib.sha256("\n".join(p.id for p in pairs).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSettings(Settings):
    """Where pairs come from inside a file or dataset: the split and the column names."""

    split: str = setting("train", "Split of a saved DatasetDict or hub dataset.")
    field: tuple = setting((), "Remap an input column, e.g. --field chosen=better (repeatable; "
                               "names: prompt, chosen, rejected, id).", multiple=True,
                           metavar="NAME=COLUMN", parse=tuple)

    def load(self, source) -> list[PreferencePair]:
        """The validated pairs of ``source`` with this split and column map."""
        return load_pairs(source, FieldMap.parse(self.field), split=self.split)
