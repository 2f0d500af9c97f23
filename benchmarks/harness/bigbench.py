"""Preference pairs from BIG-bench multiple-choice tasks: real, short, labelled questions for
selection experiments on a small model.

Each example of a JSON task (``input`` plus ``target_scores`` {option: score}) becomes one flat
pair: the prompt is the question as BIG-bench shows it zero-shot (``task_prefix``, the input with
its prefix, the options when the task lists them, the output prefix), ``chosen`` a correct option
(score = max > 0) and ``rejected`` a wrong one (score = min < max); when several qualify a seeded
RNG picks.  Examples without both are skipped and counted, and so are repeats of an earlier
example (same input and scores), which would otherwise leak between train and test.

Each task is shuffled and split on its own (``val``/``test`` fractions), so every split holds
every task; the splits interleave the tasks round-robin, and ``max_train``/``max_val``/
``max_test`` keep the first N of that order, a task-stratified subset.  Everything derives
from ``seed``: per task the shuffle, per example the option order and the picks (so adding a
task leaves the pairs of the others unchanged).

The source is the ``bigbench==1.0.0`` sdist (358 MB), fetched with ``pip download`` into
``$GRADPROJ_CACHE/bigbench`` (default ``~/.cache/gradproj/bigbench``) and never installed; the
``task.json`` members are read from it in one streaming pass.  The pairs go to
``out`` (default ``<cache>/bigbench/pairs-<seed>``) as ``train.jsonl``, ``val.jsonl``,
``test.jsonl`` (records ``id``, ``task``, ``prompt``, ``chosen``, ``rejected``; gradproj ignores
``task``) and ``meta.json``; a later run with the same settings reuses them.  ``hhh_alignment``
and ``truthful_qa`` are held back for independent evaluation and refused.

    from benchmarks.harness.bigbench import bigbench_pairs
    splits = bigbench_pairs(seed=1, max_train=600)      # {"train": [record, ...], "val": ...}

The command line is ``benchmarks/bigbench_pairs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gradproj.core.data import load_pairs, pairs_from_records, write_pairs_jsonl
from gradproj.core.errors import BadInput

PACKAGE = "bigbench==1.0.0"
ARCHIVE_NAME = "bigbench-1.0.0.tar.gz"
DEFAULT_TASKS = ("sports_understanding", "navigate", "implicatures", "ruin_names",
                 "disambiguation_qa", "anachronisms", "emoji_movie")
RESERVED_TASKS = ("hhh_alignment", "truthful_qa")  # held out for independent evaluation
SPLITS = ("train", "val", "test")
FORMAT = 1  # bump when the conversion changes, so that cached pairs are rebuilt
_TASK_NAME = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?")


class BigbenchError(BadInput):
    """Bad settings, a missing task or archive; ``str(err)`` is the whole one-line message."""


@dataclass(frozen=True)
class PairSettings:
    """What decides the pairs; validated once here, and stored in ``meta.json`` as the cache key.

    ``tasks``: BIG-bench task names (``task`` or ``task/subtask``), in the order the splits
    interleave them.  ``val``/``test``: fractions of each task's pairs (each split gets at least
    one pair per task).  ``max_*``: cap of a split (None: no cap).  ``seed``: every random choice.
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    seed: int = 0
    val: float = 0.1
    test: float = 0.2
    max_train: int | None = None
    max_val: int | None = None
    max_test: int | None = None

    def __post_init__(self):
        if not self.tasks:
            raise BigbenchError("no tasks given")
        for task in self.tasks:
            if not _TASK_NAME.fullmatch(task):
                raise BigbenchError(f"bad task name '{task}' (expected e.g. navigate or "
                                    f"abstract_narrative_understanding/4_distractors)")
            if task.split("/")[0] in RESERVED_TASKS:
                raise BigbenchError(f"task '{task}' is reserved for independent evaluation "
                                    f"({', '.join(RESERVED_TASKS)} are never turned into pairs)")
        repeated = sorted(t for t, n in Counter(self.tasks).items() if n > 1)
        if repeated:
            raise BigbenchError(f"task '{repeated[0]}' is named twice")
        if not (0 < self.val < 1 and 0 < self.test < 1 and self.val + self.test < 1):
            raise BigbenchError(f"bad split fractions val={self.val}, test={self.test}: each "
                                f"must be in (0, 1) and their sum below 1")
        for split in SPLITS:
            cap = self.cap(split)
            if cap is not None and cap < 1:
                raise BigbenchError(f"--max-{split} must be at least 1, got {cap}")

    def cap(self, split: str) -> int | None:
        """The cap of ``split`` (None: keep all)."""
        return getattr(self, f"max_{split}")


# --- the archive ------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$GRADPROJ_CACHE/bigbench``, else ``~/.cache/gradproj/bigbench``."""
    base = os.environ.get("GRADPROJ_CACHE") or Path.home() / ".cache" / "gradproj"
    return Path(base) / "bigbench"


def ensure_archive(archive: str | os.PathLike | None, cache: Path) -> Path:
    """The sdist to read: ``archive`` if given (it must exist), else the cached one, downloaded
    with pip on first use (``pip download`` only fetches; installing would pull tensorflow)."""
    if archive is not None:
        path = Path(archive)
        if not path.is_file():
            raise BigbenchError(f"no archive at {path}")
        return path
    path = cache / ARCHIVE_NAME
    if not path.is_file():
        _download(cache)
    return path


def _download(cache: Path) -> None:
    """``pip download --no-deps bigbench==1.0.0`` into ``cache``; where pip refuses (pip ≥ 24
    rejects the sdist's direct-URL dependency after fetching it), the file is fetched from the
    index's JSON API and checked against its sha256. A failure names both reasons."""
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading {PACKAGE} (358 MB) into {cache} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE,
                           "-d", str(cache)], capture_output=True, text=True)
    if done.returncode == 0 and (cache / ARCHIVE_NAME).is_file():
        return
    reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    try:
        fetch_from_index(cache / ARCHIVE_NAME)
    except (OSError, ValueError, KeyError) as err:
        raise BigbenchError(f"no {ARCHIVE_NAME} in {cache}: pip could not download {PACKAGE} "
                            f"({reason}) nor the index serve it ({err}); pass --archive PATH"
                            ) from None


def fetch_from_index(path: Path, index: str | None = None) -> None:
    """Fetch ``path.name`` from the index's JSON simple API (PEP 691; ``index`` default: pip's
    ``PIP_INDEX_URL``, else PyPI) to ``path``, checking the sha256 the index gives (a partial
    or wrong file is removed, never left in the cache)."""
    import urllib.parse
    import urllib.request

    index = (index or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    page = f"{index}/{PACKAGE.split('==')[0]}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as r:
        entry = next((f for f in json.load(r)["files"] if f["filename"] == path.name), None)
    if entry is None:
        raise KeyError(f"the index lists no {path.name}")
    url = urllib.parse.urljoin(page, entry["url"])
    part, digest = path.with_suffix(".part"), hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=180) as r, open(part, "wb") as out:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry["hashes"]["sha256"]:
            raise ValueError(f"sha256 of {path.name} does not match the index's")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)


def read_tasks(archive: Path, tasks: Sequence[str]) -> dict[str, dict]:
    """The parsed ``benchmark_tasks/<task>/task.json`` of each task, read in one streaming pass
    over the gzip (stops once all are found; nothing is written to disk)."""
    wanted = {f"{task}/task.json": task for task in tasks}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                _, sep, inner = member.name.partition("/benchmark_tasks/")
                if not (sep and member.isfile() and inner in wanted):
                    continue
                task = wanted[inner]
                try:
                    found[task] = json.loads(tar.extractfile(member).read())
                except json.JSONDecodeError as exc:
                    raise BigbenchError(f"{archive}: {member.name} is not valid JSON "
                                        f"({exc.msg})") from None
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BigbenchError(f"{archive}: not a readable tar.gz ({exc})") from None
    missing = [task for task in tasks if task not in found]
    if missing:
        raise BigbenchError(f"unknown task '{missing[0]}': {archive.name} has no "
                            f"benchmark_tasks/{missing[0]}/task.json (not a task, or a "
                            f"programmatic one)")
    return found


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- examples to pairs ------------------------------------------------------------------------

def render_prompt(task_data: Mapping, example: Mapping, rng: random.Random) -> str:
    """The question as BIG-bench's zero-shot format shows it, without surrounding whitespace.

    ``task_prefix``, then ``example_input_prefix`` (default ``"\\nQ: "``) + input, then, when
    ``append_choices_to_input`` (default true), each option after ``choice_prefix`` (default
    ``"\\n  choice: "``) in an ``rng`` order, then ``example_output_prefix`` (default
    ``"\\nA: "``).  The prefixes matter: some tasks ask their question only there
    (anachronisms), others refer to "the following" options (ruin_names).
    """
    body = task_data.get("example_input_prefix", "\nQ: ") + example["input"]
    if task_data.get("append_choices_to_input", True):
        choice_prefix = task_data.get("choice_prefix", "\n  choice: ")
        options = sorted(example["target_scores"])
        rng.shuffle(options)
        body += choice_prefix + choice_prefix.join(options)
    body += task_data.get("example_output_prefix", "\nA: ")
    prefix = str(task_data.get("task_prefix", "")).strip()
    return (prefix + "\n" + body.strip()) if prefix else body.strip()


def example_pair(task: str, index: int, task_data: Mapping, example: Mapping,
                 seed: int) -> tuple[dict | None, str | None]:
    """``(record, None)`` for a usable example, else ``(None, reason it is skipped)``.

    Correct options score the maximum, which must be > 0; wrong ones the minimum, which must be
    below it; options that are blank are neither.  The RNG is seeded by (seed, task, index).
    """
    scores = example.get("target_scores")
    if not (isinstance(scores, Mapping) and scores and isinstance(example.get("input"), str)
            and all(isinstance(v, (int, float)) for v in scores.values())):
        return None, "no target_scores"
    high, low = max(scores.values()), min(scores.values())
    correct = [o for o, v in scores.items() if v == high and high > 0 and o.strip()]
    wrong = [o for o, v in scores.items() if v == low and low < high and o.strip()]
    if not correct:
        return None, "no correct option"
    if not wrong:
        return None, "no wrong option"
    rng = random.Random(f"{seed}/{task}/{index}")
    record = {"id": f"{task}-{index}", "task": task,
              "prompt": render_prompt(task_data, example, rng),
              "chosen": rng.choice(correct).strip(), "rejected": rng.choice(wrong).strip()}
    return record, None


def task_pairs(task: str, task_data: Mapping, seed: int) -> tuple[list[dict], Counter]:
    """One pair per usable example of a task, in file order, and the skipped counts by reason.

    A repeat of an earlier example (same input and target_scores) is skipped as "duplicate".
    """
    examples = task_data.get("examples")
    if not isinstance(examples, list):
        raise BigbenchError(f"task '{task}' has no list of examples")
    records, skipped, seen = [], Counter(), set()
    for index, example in enumerate(examples):
        record, reason = example_pair(task, index, task_data, example, seed)
        if record is not None:
            key = json.dumps([example["input"], sorted(example["target_scores"].items())])
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason:
            skipped[reason] += 1
        else:
            records.append(record)
    return records, skipped


def split_task(task: str, records: list[dict], settings: PairSettings) -> dict[str, list[dict]]:
    """A seeded shuffle of one task's pairs cut into test, val and train (in that order);
    val and test get round(n · fraction) pairs, at least one each, train the rest."""
    n = len(records)
    n_val, n_test = max(1, round(n * settings.val)), max(1, round(n * settings.test))
    if n - n_val - n_test < 1:
        raise BigbenchError(f"task '{task}' has only {n} usable pairs: too few for a train, "
                            f"val and test split")
    shuffled = list(records)
    random.Random(f"{settings.seed}/{task}").shuffle(shuffled)
    return {"test": shuffled[:n_test], "val": shuffled[n_test:n_test + n_val],
            "train": shuffled[n_test + n_val:]}


def interleave(per_task: Sequence[list[dict]], cap: int | None) -> list[dict]:
    """Round-robin over the tasks' lists (a task that runs out drops out), first ``cap`` kept:
    any prefix of the result mixes the tasks as evenly as their sizes allow."""
    out: list[dict] = []
    for rank in range(max(map(len, per_task))):
        out += [records[rank] for records in per_task if rank < len(records)]
    return out if cap is None else out[:cap]


def build(settings: PairSettings, archive: Path) -> tuple[dict[str, list[dict]], dict]:
    """The splits and their ``meta.json`` content (settings, archive, counts, skipped)."""
    data = read_tasks(archive, settings.tasks)
    per_split: dict[str, list[list[dict]]] = {split: [] for split in SPLITS}
    skipped = {}
    for task in settings.tasks:
        records, skipped[task] = task_pairs(task, data[task], settings.seed)
        if not records:
            raise BigbenchError(f"task '{task}' gives no pairs (skipped: "
                                f"{dict(skipped[task]) or 'no examples'})")
        for split, part in split_task(task, records, settings).items():
            per_split[split].append(part)
    splits = {split: interleave(per_split[split], settings.cap(split)) for split in SPLITS}
    counts = {task: {split: sum(r["task"] == task for r in splits[split]) for split in SPLITS}
              for task in settings.tasks}
    meta = {"format": FORMAT, "settings": asdict(settings),
            "archive": {"file": archive.name, "bytes": archive.stat().st_size,
                        "sha256": sha256_of(archive)},
            "counts": counts, "skipped": {task: dict(c) for task, c in skipped.items()}}
    return splits, meta


# --- files ------------------------------------------------------------------------------------

def write_splits(splits: Mapping[str, list[dict]], meta: Mapping, out: Path) -> None:
    """``<split>.jsonl`` for each split (validated by gradproj before writing, and read back
    with ``load_pairs`` after), then ``meta.json`` last, which marks the folder complete."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    for split, records in splits.items():
        path = out / f"{split}.jsonl"
        write_pairs_jsonl(pairs_from_records(records, origin=f"{split} pairs"), path)
        if len(load_pairs(path)) != len(records):
            raise BigbenchError(f"{path}: reads back a different number of pairs")
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / "meta.json")


def read_cached(out: Path, settings: PairSettings,
                archive: Path) -> tuple[dict[str, list[dict]], dict] | None:
    """The splits and meta in ``out`` when they were made by this code from the same settings and
    an archive of the same name and size; else None."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        same = (meta.get("format") == FORMAT
                and meta.get("settings") == json.loads(json.dumps(asdict(settings)))
                and meta.get("archive", {}).get("file") == archive.name
                and meta.get("archive", {}).get("bytes") == archive.stat().st_size)
        if not same:
            return None
        splits = {}
        for split in SPLITS:
            with open(out / f"{split}.jsonl", encoding="utf-8") as fh:
                splits[split] = [json.loads(line) for line in fh if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return splits, meta


def prepare(settings: PairSettings, cache_dir: str | os.PathLike | None = None,
            archive: str | os.PathLike | None = None,
            out: str | os.PathLike | None = None) -> tuple[dict[str, list[dict]], dict, Path, bool]:
    """Splits, meta, the folder holding them, and whether they were reused from it.

    ``cache_dir`` is the BIG-bench cache (default :func:`default_cache_dir`), ``out`` the pairs
    folder (default ``<cache_dir>/pairs-<seed>``).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = ensure_archive(archive, cache)
    folder = Path(out) if out is not None else cache / f"pairs-{settings.seed}"
    cached = read_cached(folder, settings, path)
    if cached is not None:
        return *cached, folder, True
    splits, meta = build(settings, path)
    write_splits(splits, meta, folder)
    return splits, meta, folder, False


def bigbench_pairs(tasks: Sequence[str] = DEFAULT_TASKS, seed: int = 0, val: float = 0.1,
                   test: float = 0.2, max_train: int | None = None, max_val: int | None = None,
                   max_test: int | None = None, cache_dir: str | os.PathLike | None = None,
                   archive: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Split name → flat pair records (``id``, ``task``, ``prompt``, ``chosen``, ``rejected``),
    built once and then reused from ``<cache_dir>/pairs-<seed>``; see the module docstring."""
    settings = PairSettings(tuple(tasks), seed, val, test, max_train, max_val, max_test)
    return prepare(settings, cache_dir, archive)[0]
