"""``gradproj select`` end to end, reusing whatever its output folder already holds.

    DIR/run.json          inputs of this run (model, data, training and store settings)
    DIR/theta/            warm-up adapter θ: 1 epoch DPO on TRAIN        (unless --adapter)
    DIR/theta_v/          auxiliary adapter θ_V: 1 epoch on VAL from θ   (unless --aux-adapter)
    DIR/store/            gradient store at θ           (only when IF is needed)
    DIR/influence/        IF and TIF on VAL             (only when IF is needed)
    DIR/scores.parquet    irm, lossdiff (+ if, tif) per pair id
    DIR/selection.json    rule, bands, counts, per-reason drop counts
    DIR/selected.jsonl    the kept pairs in their input format
    DIR/report.md + *.png

A folder made for other inputs is refused unless ``force``; rerunning with another ``method``
or ``keep`` reuses the adapters and scores and only reselects.

Under torchrun (gradproj.core.distributed) every rank runs the pipeline: θ and θ_V train
data-parallel (rank 0 writes them), the scores' forward passes are sharded (rank r scores the
one-process run's batches b % world == r, merged in input order on every rank), the store is
built as by ``build-store`` (rank r the shards i % world == r), IF is computed by rank 0 while
the others wait, and the selection's outputs, report and run.json are written by rank 0 alone.
Rank 0 prints one ``gradproj: stage NAME: ranks ...`` line per stage on stderr.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from gradproj.attribution.influence import InfluenceSettings, compute_influence, write_influence
from gradproj.attribution.scores import ScoreTable, merge_score_tables, score_pairs
from gradproj.attribution.selection import (
    BAND_SCORES,
    DEFAULT_LOW_SHARE,
    METHODS,
    RULE_SCORES,
    Selection,
    overlap_coefficient,
    select,
)
from gradproj.core import distributed
from gradproj.core.data import (
    FieldMap,
    PreferencePair,
    data_fingerprint,
    load_pairs,
    write_pairs_jsonl,
)
from gradproj.core.errors import GradprojError, IncompatibleStore, InputError
from gradproj.core.model import LoadedModel, ModelSettings, load_model, load_tokenizer, reattach
from gradproj.core.objectives import PreferenceSettings
from gradproj.core.progress import progress_bar
from gradproj.core.settings import Settings, band, fraction, parse_floats, setting
from gradproj.pipeline.groups import group_table, group_values
from gradproj.pipeline.outputs import push_selection, write_selection_outputs
from gradproj.store.build import StoreSettings, build_store
from gradproj.core.atomic import write_json_atomic
from gradproj.store.shards import Store
from gradproj.training.train import TrainSettings, train_adapter

log = logging.getLogger(__name__)
RUN_SCHEMA = 3
"""run.json schema: 2 adds the objective and the shared preference settings; 3 nests the
influence settings (``influence.tif_band`` ...) where ``tif_band`` stood alone."""


def needs_if(method: str) -> bool:
    """Whether a selection rule reads IF (its scores include ``if``)."""
    return "if" in RULE_SCORES[method]


@dataclass(frozen=True)
class SelectSettings(Settings):
    """Which rule keeps which share of the pairs (rerunning with others only reselects)."""

    method: str = setting("lossdiff-irm", "Selection rule.", choices=METHODS)
    keep: float = setting(0.64, "Fraction of pairs to keep.", check=fraction)
    lossdiff_band: tuple | None = setting(None, "Explicit LOW,HIGH quantile band of LossDiff "
                                                "(else solved from --keep).",
                                          parse=parse_floats, check=band, metavar="LOW,HIGH")
    irm_band: tuple | None = setting(None, "Explicit LOW,HIGH quantile band of IRM.",
                                     parse=parse_floats, check=band, metavar="LOW,HIGH")
    if_band: tuple | None = setting(None, "Explicit LOW,HIGH quantile band of IF (tif).",
                                    parse=parse_floats, check=band, metavar="LOW,HIGH")
    low_share: float = setting(DEFAULT_LOW_SHARE, "Share of the trimmed mass taken from each "
                                                  "score's low tail.",
                               check=(lambda v: 0 < v < 1, "must be in (0, 1)"))
    with_if: bool = setting(False, "Also compute IF/TIF when the rule does not need them (for "
                                   "the report's overlap with TIF).")
    group_by: str | None = setting(None, "Input column to break the selection down by (e.g. "
                                         "source): pairs, kept share, mean scores, flips "
                                         "removed per value.", metavar="COLUMN")
    push_to_hub: str | None = setting(None, "Also push OUT/selected to the hub as this dataset "
                                            "repo (needs a hub connection and login).",
                                      metavar="REPO")

    def bands(self) -> dict[str, tuple[float, float]]:
        """Explicit bands of the scores the rule uses, by score name."""
        given = {"lossdiff": self.lossdiff_band, "irm": self.irm_band, "if": self.if_band}
        return {k: tuple(v) for k, v in given.items()
                if v is not None and k in BAND_SCORES.get(self.method, ())}

    def needs_if(self) -> bool:
        return needs_if(self.method) or self.with_if or self.if_band is not None


@dataclass(frozen=True)
class RunInputs(Settings):
    """Everything that makes a run's artifacts what they are (method/keep excluded)."""

    model: ModelSettings = setting(default_factory=ModelSettings)
    train: str = setting(None, "Training pairs to score and select from.", cli=False)
    val: str = setting(None, "Validation pairs (the target the selection serves).", cli=False)
    train_split: str = setting("train", "Split of --train (a saved DatasetDict or hub dataset), "
                                        "e.g. train_prefs.")
    val_split: str = setting("train", "Split of --val, e.g. test_prefs.")
    field: tuple = setting((), "Remap an input column of every input, e.g. --field "
                               "chosen=better (repeatable; names: prompt, chosen, rejected, id).",
                           multiple=True, metavar="NAME=COLUMN", parse=tuple)
    adapter: str | None = setting(None, "θ (else trained: 1 epoch on the training pairs).",
                                  cli=False)
    aux_adapter: str | None = setting(None, "θ_V (else trained: 1 epoch on --val from θ).")
    training: TrainSettings = setting(default_factory=TrainSettings)
    store: StoreSettings = setting(default_factory=StoreSettings)
    pref: PreferenceSettings = setting(default_factory=PreferenceSettings)
    influence: InfluenceSettings = setting(default_factory=InfluenceSettings, option="")


@dataclass
class SelectResult:
    selection: Selection
    scores: ScoreTable
    out: Path
    trained: list[str]
    """Stages computed in this run (the rest were reused)."""


def _fingerprint(inputs: RunInputs, train: list[PreferencePair], val: list[PreferencePair]):
    d = inputs.to_dict()
    d["train_fingerprint"], d["val_fingerprint"] = data_fingerprint(train), data_fingerprint(val)
    d.pop("train"), d.pop("val")
    d["schema_version"] = RUN_SCHEMA
    d["objective"] = inputs.pref.objective().settings()
    return d


def _claim(out: Path, fingerprint: dict, force: bool) -> None:
    """Make ``out`` this run's folder. Under torchrun every rank checks (and refuses alike);
    rank 0 alone clears and writes, then all meet at a barrier."""
    replace_old = _check_claim(out, fingerprint, force)
    distributed.barrier()               # no rank reads the folder after rank 0 changes it
    if distributed.is_main():
        if replace_old:
            for name in ("theta", "theta_v", "store", "influence", "theta.checkpoints",
                         "theta_v.checkpoints"):
                shutil.rmtree(out / name, ignore_errors=True)
            for f in out.glob("*"):
                if f.is_file():
                    f.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", fingerprint)
    distributed.barrier()


def _check_claim(out: Path, fingerprint: dict, force: bool) -> bool:
    """Refuse a folder that is not ours; True when an older run in it must be cleared."""
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("schema_version") != RUN_SCHEMA and not force:
            raise IncompatibleStore(f"{out}: a run folder of schema version "
                                    f"{old.get('schema_version', 1)} (this gradproj writes "
                                    f"{RUN_SCHEMA}): rerun with --force to recompute it, or use "
                                    "another --out")
        if old != fingerprint:
            if not force:
                diff = sorted(k for k in set(old) | set(fingerprint)
                              if old.get(k) != fingerprint.get(k))
                raise GradprojError(f"{out}: holds a run with other inputs ({', '.join(diff)} "
                                    "differ); use --force to replace it, or another --out")
            return True
    elif out.exists() and any(out.iterdir()) and not force:
        raise GradprojError(f"{out}: folder exists and is not a gradproj select folder "
                            "(use --force or another --out)")
    return False


class Pipeline:
    """The stages of ``select``; each is skipped when its output already exists."""

    def __init__(self, inputs: RunInputs, out, *, force: bool = False, progress: bool = True,
                 loaded: LoadedModel | None = None, force_objective: bool = False,
                 also_check: dict[str, list[PreferencePair]] | None = None,
                 resume: bool = False):
        """``loaded``: the base model already in memory (its adapter will be swapped);
        ``force_objective``: allow given adapters trained with another objective;
        ``also_check``: other inputs (by file name) checked with train and val before any work;
        ``resume``: a training stage that was cut continues from its last checkpoint.

        Every input must hold scorable pairs under ``inputs.pref`` (template, max length) before
        the folder is claimed; a run that fails before its first stage completes leaves the
        folder as it found it (:meth:`released_on_failure`)."""
        self.inputs, self.out, self.progress = inputs, Path(out), progress
        self.force_objective, self.resume = force_objective, resume
        self.objective = inputs.pref.objective()
        fields = FieldMap.parse(inputs.field)
        self.train = load_pairs(inputs.train, fields, split=inputs.train_split)
        self.val = load_pairs(inputs.val, fields, split=inputs.val_split)
        fingerprint = _fingerprint(inputs, self.train, self.val)
        _check_claim(self.out, fingerprint, force)          # a folder not ours: refused first
        tokenizer = loaded.tokenizer if loaded is not None else load_tokenizer(inputs.model)
        for name, pairs in {inputs.train: self.train, inputs.val: self.val,
                            **(also_check or {})}.items():
            check_scorable(name, pairs, tokenizer, inputs.pref)
        self._found = (self.out.exists(), (self.out / "run.json").is_file())
        _claim(self.out, fingerprint, force)
        self.loaded: LoadedModel | None = loaded
        self.stages: list[str] = []

    @contextmanager
    def released_on_failure(self):
        """Around the first stages: if they fail before one completes, undo the claim — a
        folder this run created is removed, else the run.json it wrote (an earlier run's folder
        is kept) — so that the corrected rerun is not refused."""
        try:
            yield
        except BaseException:
            existed, had_run = self._found
            if not (self.stages or had_run or not distributed.is_main()):
                if not existed:
                    shutil.rmtree(self.out, ignore_errors=True)
                else:
                    (self.out / "run.json").unlink(missing_ok=True)
            raise

    def model(self, adapter: str | None) -> LoadedModel:
        """The loaded model with ``adapter`` active (loaded once; adapters are swapped)."""
        if self.loaded is None:
            self.loaded = load_model(replace(self.inputs.model, adapter=adapter))
        elif self.loaded.settings.adapter != adapter or adapter is None:
            self.loaded = reattach(self.loaded, adapter)
        return self.loaded

    def theta(self) -> str:
        if self.inputs.adapter:
            return self.inputs.adapter
        path = self.out / "theta"
        if not (path / "adapter_config.json").is_file():
            with distributed.stage("warm-up θ", self._data_parallel()):
                train_adapter(self.model(None), self.train, self.inputs.training, path,
                              pref=self.inputs.pref, overwrite=True, progress=self.progress,
                              resume=self.resume)
            self.loaded = self.loaded.named(str(path))
            self.stages.append("warm-up θ")
        return str(path)

    def theta_v(self) -> str:
        if self.inputs.aux_adapter:
            return self.inputs.aux_adapter
        path = self.out / "theta_v"
        if not (path / "adapter_config.json").is_file():
            theta = self.theta()
            with distributed.stage("auxiliary θ_V", self._data_parallel()):
                train_adapter(self.model(theta), self.val, self.inputs.training, path,
                              pref=self.inputs.pref, overwrite=True, progress=self.progress,
                              force_objective=self.force_objective, resume=self.resume)
            self.loaded = self.loaded.named(str(path))
            self.stages.append("auxiliary θ_V")
        return str(path)

    def _data_parallel(self) -> str:
        world = distributed.world_size()
        return (f"data-parallel, {self.inputs.training.batch_size // max(world, 1)} pairs per "
                f"rank per step")

    def scores(self, need_if: bool) -> ScoreTable:
        path = self.out / "scores.parquet"
        table = ScoreTable.read(path) if path.is_file() else None
        if table is None:
            theta, aux = self.theta(), self.theta_v()
            passes = 2 + self.objective.needs_reference       # reference, θ, θ_V
            rank, world = distributed.rank(), distributed.world_size()
            bs = self.inputs.training.batch_size
            mine = sum(len(self.train[i:i + bs]) for i in range(rank * bs, len(self.train),
                                                                 world * bs))
            # rank r: the one-process run's batches b % world == r (same forward passes)
            with distributed.stage("scores", f"batches b % {world} == r of {bs} pairs"), \
                    progress_bar(passes * mine, "scores",
                                 self.progress and distributed.is_main()) as update:
                part = score_pairs(self.model(theta), self.train, aux, self.inputs.pref,
                                   batch_size=bs, progress=update,
                                   force_objective=self.force_objective, shard=(rank, world))
                table = (merge_score_tables(distributed.all_gather(part), self.train)
                         if world > 1 else part)
            table.meta["objective"] = self.objective.settings()
            self.stages.append("scores")
        if need_if and "if" not in table.columns:
            inf = self.influence()
            if inf is not None:                               # rank 0
                table.add("if", inf.ids, inf.scores)
                table.add("tif", inf.ids, inf.tif.astype(float))
        if distributed.is_main():
            table.write(path)
        distributed.barrier()
        if not distributed.is_main():       # IF is added on rank 0: read back its table
            table = ScoreTable.read(path)
        return table

    def influence(self):
        """IF and TIF of the training pairs on VAL (None on ranks other than 0 under torchrun:
        rank 0 computes the validation gradients and IF while the others wait)."""
        theta = self.theta()
        store_dir = self.out / "store"
        if not (store_dir / "manifest.json").is_file() or not Store(store_dir, verify=False).complete:
            world = distributed.world_size()
            resume = store_dir.exists()
            distributed.barrier()       # every rank has looked before rank 0 creates the folder
            with distributed.stage("store", f"shards i % {world} == r"):
                build_store(self.model(theta), self.train, self.inputs.store, store_dir,
                            pref=self.inputs.pref, resume=resume,
                            progress=self.progress, force_objective=self.force_objective,
                            rank=distributed.rank(), world_size=world,
                            barrier=distributed.barrier)
            self.stages.append("store")
        result = None
        with distributed.main_only_stage("influence") as run:
            if run:
                store = Store(store_dir)
                result = compute_influence([store], self.val, self.inputs.influence,
                                           loaded=[self.model(theta)])
                write_influence(result, self.out / "influence", {"store": str(store_dir)})
        self.stages.append("influence")
        return result


def check_scorable(name: str, pairs: list[PreferencePair], tokenizer,
                   pref: PreferenceSettings) -> None:
    """Refuse, before any work, an input none of whose pairs survives tokenization under
    ``pref``, naming the file and the reasons (and conversational pairs without a template)."""
    tok = pref.tokenize(pairs, tokenizer)
    if not tok.pairs:
        reasons = Counter(tok.excluded.values())
        why = "; ".join(f"{n} × {reason}" for reason, n in reasons.most_common())
        raise InputError(f"no pair is scorable at --max-length {pref.max_length} ({why})", name)


def run_select(inputs: RunInputs, out, settings: SelectSettings = SelectSettings(), *,
               force: bool = False, progress: bool = True,
               force_objective: bool = False, resume: bool = False) -> SelectResult:
    """Run (or resume) the pipeline and apply ``settings.method``; writes every output.
    ``resume``: the training stage that was cut continues from its last checkpoint."""
    from gradproj.pipeline.report import write_report

    pipe = Pipeline(inputs, out, force=force, progress=progress,
                    force_objective=force_objective, resume=resume)
    with pipe.released_on_failure():
        if settings.group_by:
            group_values(pipe.train, settings.group_by)     # a missing column fails before work
        table = pipe.scores(settings.needs_if())
    sel = select(table, settings.method, settings.keep, bands=settings.bands() or None,
                 low_share=settings.low_share, seed=inputs.training.seed)
    if not distributed.is_main():       # every rank selects (cheap); rank 0 writes the outputs
        distributed.barrier()
        return SelectResult(sel, table, pipe.out, pipe.stages)
    by_id = {p.id: p for p in pipe.train}
    write_pairs_jsonl([by_id[i] for i in sel.kept], pipe.out / "selected.jsonl")
    info = dict(sel.to_dict(), objective=pipe.objective.settings(), keep=settings.keep,
                low_share=settings.low_share, settings=settings.to_dict(),
                computed=pipe.stages, kept_ids=sel.kept)
    if "if" in table.columns:
        tif = select(table, "tif", settings.keep, low_share=settings.low_share)
        info["overlap_with_tif"] = overlap_coefficient(sel.kept, tif.kept)
    if settings.group_by:
        info["groups"] = {"column": settings.group_by,
                          "rows": group_table(pipe.train, table, sel, settings.group_by)}
    info["outputs"] = write_selection_outputs(pipe.out, pipe.train, table, sel, info,
                                              FieldMap.parse(inputs.field))
    write_json_atomic(pipe.out / "selection.json", info)
    write_report(pipe.out, table, sel, info)
    if settings.push_to_hub:
        push_selection(pipe.out, settings.push_to_hub)
    distributed.barrier()
    distributed.announce("selection, outputs, report", "rank 0 (the others wait)")
    return SelectResult(sel, table, pipe.out, pipe.stages)
