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
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gradproj.store.build import StoreSettings, build_store
from gradproj.core.data import PreferencePair, load_pairs, write_pairs_jsonl
from gradproj.core.errors import GradprojError
from gradproj.attribution.influence import InfluenceSettings, compute_influence, write_influence
from gradproj.core.model import LoadedModel, ModelSettings, load_model, reattach
from gradproj.attribution.scores import ScoreTable, score_pairs
from gradproj.attribution.selection import BAND_SCORES, Selection, overlap_coefficient, select
from gradproj.store.shards import Store, write_json_atomic
from gradproj.training.train import TrainSettings, data_fingerprint, train_adapter

log = logging.getLogger(__name__)
NEEDS_IF = ("tif", "top-if")


@dataclass(frozen=True)
class SelectSettings:
    method: str = "lossdiff-irm"
    keep: float = 0.64
    bands: dict = field(default_factory=dict)
    """Explicit bands by score name (lossdiff, irm, if); else solved from keep."""
    low_share: float = 5 / 9
    seed: int = 0
    with_if: bool = False
    """Also compute IF/TIF when the method does not need them (for the report's overlap)."""


@dataclass(frozen=True)
class RunInputs:
    """Everything that makes a run's artifacts what they are (method/keep excluded)."""

    model: ModelSettings
    train: str
    val: str
    adapter: str | None = None
    aux_adapter: str | None = None
    training: TrainSettings = field(default_factory=TrainSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    tif_band: tuple[float, float] = (0.20, 0.84)


@dataclass
class SelectResult:
    selection: Selection
    scores: ScoreTable
    out: Path
    trained: list[str]
    """Stages computed in this run (the rest were reused)."""


def _fingerprint(inputs: RunInputs, train: list[PreferencePair], val: list[PreferencePair]):
    d = json.loads(json.dumps(asdict(inputs)))
    d["train_fingerprint"], d["val_fingerprint"] = data_fingerprint(train), data_fingerprint(val)
    d.pop("train"), d.pop("val")
    return d


def _claim(out: Path, fingerprint: dict, force: bool) -> None:
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != fingerprint:
            if not force:
                diff = sorted(k for k in set(old) | set(fingerprint)
                              if old.get(k) != fingerprint.get(k))
                raise GradprojError(f"{out}: holds a run with other inputs ({', '.join(diff)} "
                                    "differ); use --force to replace it, or another --out")
            for name in ("theta", "theta_v", "store", "influence"):
                shutil.rmtree(out / name, ignore_errors=True)
            for f in out.glob("*"):
                if f.is_file():
                    f.unlink()
    elif out.exists() and any(out.iterdir()) and not force:
        raise GradprojError(f"{out}: folder exists and is not a gradproj select folder "
                            "(use --force or another --out)")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, fingerprint)


class Pipeline:
    """The stages of ``select``; each is skipped when its output already exists."""

    def __init__(self, inputs: RunInputs, out, *, force: bool = False, progress: bool = True,
                 loaded: LoadedModel | None = None):
        """``loaded``: the base model already in memory (its adapter will be swapped)."""
        self.inputs, self.out, self.progress = inputs, Path(out), progress
        self.train = load_pairs(inputs.train)
        self.val = load_pairs(inputs.val)
        _claim(self.out, _fingerprint(inputs, self.train, self.val), force)
        self.loaded: LoadedModel | None = loaded
        self.stages: list[str] = []

    def _model(self, adapter: str | None) -> LoadedModel:
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
            train_adapter(self._model(None), self.train, self.inputs.training, path,
                          overwrite=True, progress=self.progress)
            self.loaded.settings = replace(self.loaded.settings, adapter=str(path))
            self.stages.append("warm-up θ")
        return str(path)

    def theta_v(self) -> str:
        if self.inputs.aux_adapter:
            return self.inputs.aux_adapter
        path = self.out / "theta_v"
        if not (path / "adapter_config.json").is_file():
            theta = self.theta()
            train_adapter(self._model(theta), self.val, self.inputs.training, path,
                          overwrite=True, progress=self.progress)
            self.loaded.settings = replace(self.loaded.settings, adapter=str(path))
            self.stages.append("auxiliary θ_V")
        return str(path)

    def scores(self, need_if: bool) -> ScoreTable:
        path = self.out / "scores.parquet"
        table = ScoreTable.read(path) if path.is_file() else None
        if table is None:
            theta, aux = self.theta(), self.theta_v()
            t = self.inputs.training
            table = score_pairs(self._model(theta), self.train, aux, beta=t.beta,
                                max_length=t.max_length, batch_size=t.batch_size)
            self.stages.append("scores")
        if need_if and "if" not in table.columns:
            inf = self.influence()
            table.add("if", inf.ids, inf.scores)
            table.add("tif", inf.ids, inf.tif.astype(float))
        table.write(path)
        return table

    def influence(self):
        theta = self.theta()
        store_dir = self.out / "store"
        s = replace(self.inputs.store, beta=self.inputs.training.beta,
                    max_length=self.inputs.training.max_length)
        if not (store_dir / "manifest.json").is_file() or not Store(store_dir, verify=False).complete:
            build_store(self._model(theta), self.train, s, store_dir,
                        resume=store_dir.exists(), progress=self.progress)
            self.stages.append("store")
        store = Store(store_dir)
        result = compute_influence([store], self.val,
                                   InfluenceSettings(tif_band=self.inputs.tif_band, top_k=5),
                                   loaded=[self._model(theta)])
        write_influence(result, self.out / "influence", {"store": str(store_dir)})
        self.stages.append("influence")
        return result


def run_select(inputs: RunInputs, out, settings: SelectSettings = SelectSettings(), *,
               force: bool = False, progress: bool = True) -> SelectResult:
    """Run (or resume) the pipeline and apply ``settings.method``; writes every output."""
    from gradproj.pipeline.report import write_report

    pipe = Pipeline(inputs, out, force=force, progress=progress)
    need_if = settings.method in NEEDS_IF or settings.with_if or "if" in settings.bands
    table = pipe.scores(need_if)
    bands = {k: v for k, v in settings.bands.items()
             if k in BAND_SCORES.get(settings.method, ())}
    sel = select(table, settings.method, settings.keep, bands=bands or None,
                 low_share=settings.low_share, seed=settings.seed)
    by_id = {p.id: p for p in pipe.train}
    write_pairs_jsonl([by_id[i] for i in sel.kept], pipe.out / "selected.jsonl")
    info = dict(sel.to_dict(), keep=settings.keep, low_share=settings.low_share,
                computed=pipe.stages, kept_ids=sel.kept)
    if "if" in table.columns:
        tif = select(table, "tif", settings.keep, low_share=settings.low_share)
        info["overlap_with_tif"] = overlap_coefficient(sel.kept, tif.kept)
    write_json_atomic(pipe.out / "selection.json", info)
    write_report(pipe.out, table, sel, info)
    return SelectResult(sel, table, pipe.out, pipe.stages)
