"""DPO training of the LoRA adapter with trl's DPOTrainer.

This makes the paper's warm-up model θ (1 epoch on all training pairs, from a fresh adapter) and
auxiliary model θ_V (1 more epoch on the validation pairs, from θ), and the final continued
training on a selection.

An output folder holds:

- ``adapter_config.json``, ``adapter_model.safetensors`` — the peft adapter;
- ``optimizer.safetensors`` — AdamW state by parameter name: ``{name}.exp_avg`` and
  ``{name}.exp_avg_sq`` (fp32), with ``step``, ``betas``, ``eps``, ``weight_decay`` in the
  safetensors metadata (read back with :func:`load_optimizer_state`);
- ``lr_schedule.json`` — the learning rate used at every optimizer step;
- ``train.json`` — the settings, data fingerprint, per-step losses and timings.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradproj.core import distributed
from gradproj.core.data import PreferencePair, data_fingerprint
from gradproj.core.errors import BadInput, GradprojError, IncompatibleStore
from gradproj.core.logprobs import (
    PairLogProbs,
    adapter_disabled,
    response_logprobs,
    sequence_logprobs,
)
from gradproj.core.model import LoadedModel, trainer_changes_undoer
from gradproj.core.objectives import Objective, PreferenceSettings, check_objective
from gradproj.core.settings import (
    Settings,
    at_least_one,
    non_negative,
    positive,
    setting,
    unit_interval,
)
from gradproj.core.tokens import PairBatch, budget_groups, resolve_chat_template

log = logging.getLogger(__name__)
OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_SCHEMA = 2
"""train.json schema: 2 adds the objective record (1: DPO implied, β in settings)."""


@dataclass(frozen=True)
class TrainSettings(Settings):
    """How to train the adapter (the objective and max_length are in PreferenceSettings)."""

    epochs: float = setting(1.0, "Passes over the pairs.", check=positive)
    lr: float = setting(5e-4, "Peak AdamW learning rate.", check=positive)
    batch_size: int = setting(8, "Pairs per optimizer step (per device, before accumulation); "
                                 "also pairs per forward pass when scoring.", check=at_least_one)
    grad_accum: int = setting(1, "Gradient accumulation steps.", check=at_least_one)
    seed: int = setting(0, "Seed of shuffling and of a fresh adapter's init.")
    scheduler: str = setting("linear", "transformers lr scheduler (linear, cosine, constant ...).")
    warmup_ratio: float = setting(0.0, "Share of steps with a linear learning-rate warm-up.",
                                  check=unit_interval)
    save_steps: int = setting(0, "Write a checkpoint (Hugging Face layout: OUT.checkpoints/"
                                 "checkpoint-N/, adapter + optimizer + scheduler + RNG) every N "
                                 "optimizer steps; 0: none. --resume continues from the last.",
                              check=non_negative)
    report_to: str = setting("none", "Where trl logs the training (its report_to): none, "
                                     "tensorboard (logs in OUT.checkpoints/runs) or wandb.",
                             choices=("none", "tensorboard", "wandb"))
    trl_loss: bool = setting(False, "Compute the loss with trl's own loss_type (its fused "
                                    "LM-head log-probs) where trl has the objective, instead of "
                                    "gradproj's log-probs (the ones the scores and the store "
                                    "use; 2-3x faster on a CPU).")


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    n_pairs: int
    excluded: dict[str, str]
    batches: list[list[str]] = field(default_factory=list)
    """The pair ids of every batch in the order trained on (this rank's share under torchrun):
    batch k is optimizer step k + 1 when ``grad_accum`` is 1."""


def objective_loss(model, inputs: dict, objective: Objective, unwrapped=None) -> torch.Tensor:
    """Per-pair loss [B] of a trl-collated DPO batch (``input_ids`` [2B, T], chosen rows first,
    ``attention_mask``, ``completion_mask``): the same sums gradproj's scores and store use.
    The reference log-probs are the batch's ``ref_chosen_logps`` / ``ref_rejected_logps`` where
    it has them (precomputed), else a forward pass with the adapter disabled."""
    batch = PairBatch([""] * (len(inputs["input_ids"]) // 2), inputs["input_ids"],
                      inputs["attention_mask"], inputs["completion_mask"].float())
    policy = sequence_logprobs(model, batch)
    b = len(batch)
    if objective.needs_reference and "ref_chosen_logps" in inputs:
        reference = tuple(inputs[k].to(policy) for k in ("ref_chosen_logps",
                                                          "ref_rejected_logps"))
    elif objective.needs_reference:
        with torch.no_grad(), adapter_disabled(unwrapped if unwrapped is not None else model):
            ref = sequence_logprobs(model, batch)
        reference = (ref[:b], ref[b:])
    else:
        reference = (torch.zeros_like(policy[:b]), torch.zeros_like(policy[:b]))
    return objective(PairLogProbs.from_rows(policy, reference, batch.response_lengths()))


def micro_batches(inputs: dict, max_tokens: int) -> list[dict]:
    """A trl-collated batch of B pairs (rows [0, B) chosen, [B, 2B) rejected, right-padded) cut
    into micro-batches of at most ``max_tokens`` padded tokens (2·b·T), longest pairs first
    (:func:`gradproj.core.tokens.budget_groups`); each keeps its pairs' rows and per-pair
    columns, trimmed to its own longest row, and carries ``"weight"`` = b / B."""
    b = len(inputs["input_ids"]) // 2
    lengths = inputs["attention_mask"].sum(-1)
    pair_len = torch.maximum(lengths[:b], lengths[b:]).tolist()
    out = []
    for group in budget_groups(pair_len, max_tokens):
        width = max(pair_len[i] for i in group)
        rows = torch.tensor(group + [i + b for i in group])
        sub = {k: (v[rows, :width] if v.dim() == 2 else v[torch.tensor(group)])
               for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        sub["weight"] = len(group) / b
        out.append(sub)
    return out


def _trainer_class(objective: Objective, trl_loss: bool, max_tokens: int | None = None):
    from transformers import TrainerCallback
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs already tokenized and truncated by gradproj.core.tokens, so
        training sees exactly the tokens that scoring and the gradient store see. The loss is
        gradproj's (:func:`objective_loss` on the collated batch), or trl's own loss_type with
        ``trl_loss`` (where trl has the objective).

        With a token budget (``max_tokens``) each per-device batch is cut into micro-batches of
        at most that many padded tokens (:func:`micro_batches`), each backward weighted by its
        share of the batch: the gradient of the optimizer step is the batch's mean, whatever the
        budget (the effective batch is ``batch_size × grad_accum`` either way)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            if max_tokens is None:
                return super().training_step(model, inputs, num_items_in_batch)
            parts = micro_batches(inputs, max_tokens)
            total = None
            for k, part in enumerate(parts):
                # DDP: reduce the gradients once, after the last micro-batch
                sync = k == len(parts) - 1
                with (contextlib.nullcontext() if sync
                      else self.accelerator.no_sync(model)):
                    loss = super().training_step(model, part, num_items_in_batch)
                total = loss if total is None else total + loss
            return total

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", 1.0)
            loss = self._loss(model, inputs, return_outputs, num_items_in_batch)
            if return_outputs:
                return loss[0] * weight, loss[1]
            return loss * weight

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()    # keep "row": which pair it is
            self._signature_columns = [*self._signature_columns, "row"]

        def _loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if trl_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = objective_loss(model, inputs, objective,
                                  self.accelerator.unwrap_model(model)).mean()
            return (loss, {}) if return_outputs else loss

    class Record(TrainerCallback):
        """Collects per-step loss and learning rate; drives a tqdm bar instead of log prints;
        calls ``on_step(step)`` after every optimizer step with the model in eval mode."""

        def __init__(self, show: bool, on_step=None, model=None):
            self.losses, self.lrs, self.show, self.bar = [], [], show, None
            self.on_step, self.model = on_step, model

        def restore(self, checkpoint: Path) -> None:
            """Losses and learning rates of the steps a checkpoint holds (its log history)."""
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            for entry in state.get("log_history", []):
                if "loss" in entry:
                    self.losses.append(float(entry["loss"]))
                    self.lrs.append(float(entry.get("learning_rate", float("nan"))))

        def on_step_end(self, args, state, control, **kw):
            if self.on_step is None:
                return
            training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    self.on_step(state.global_step)
            finally:
                self.model.train(training)

        def on_train_begin(self, args, state, control, **kw):
            if self.show:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=state.max_steps, desc="train", unit="step", leave=False)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                self.lrs.append(float(logs.get("learning_rate", float("nan"))))
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return PreTokenizedDPOTrainer, Record


def reference_logprobs(loaded: LoadedModel, pairs: list[PreferencePair],
                       pref: PreferenceSettings = PreferenceSettings(),
                       batch_size: int = 8) -> dict[str, tuple[float, float]]:
    """Pair id → (log π_ref(chosen), log π_ref(rejected)) with the adapter disabled, on the
    tokens training sees: the ``reference`` argument of :func:`train_adapter`."""
    tok = pref.tokenize(pairs, loaded.tokenizer).pairs
    chosen, rejected = response_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id,
                                         batch_size, reference=True)
    return {p.id: (float(c), float(r)) for p, c, r in zip(tok, chosen, rejected)}


def save_optimizer_state(optimizer, named_params: dict[str, torch.nn.Parameter], path) -> None:
    """Write AdamW moments by parameter name (see module docstring)."""
    from safetensors.torch import save_file

    inner = getattr(optimizer, "optimizer", optimizer)
    by_id = {id(p): n for n, p in named_params.items()}
    tensors, step = {}, 0
    group = inner.param_groups[0]
    for p, state in inner.state.items():
        name = by_id.get(id(p))
        if name is None or "exp_avg" not in state:
            continue
        tensors[f"{name}.exp_avg"] = state["exp_avg"].detach().float().cpu().contiguous()
        tensors[f"{name}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
        step = int(state["step"])
    meta = {"step": str(step), "betas": json.dumps(list(group["betas"])),
            "eps": str(group["eps"]), "weight_decay": str(group.get("weight_decay", 0.0)),
            "optimizer": type(inner).__name__}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer_state(adapter_dir) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """({param name: {"exp_avg", "exp_avg_sq"}}, {"step", "betas", "eps", ...}) of a train run."""
    from safetensors import safe_open

    path = Path(adapter_dir) / OPTIMIZER_FILE
    if not path.is_file():
        raise GradprojError(f"{path}: no optimizer state (was the adapter made by gradproj train?)")
    state: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
        for key in f.keys():
            name, _, kind = key.rpartition(".")
            state.setdefault(name, {})[kind] = f.get_tensor(key)
    meta = {"step": int(raw["step"]), "betas": tuple(json.loads(raw["betas"])),
            "eps": float(raw["eps"]), "weight_decay": float(raw["weight_decay"])}
    return state, meta


def checkpoint_dir(out_dir) -> Path:
    """Where a training stage writing ``out_dir`` keeps its checkpoints (``checkpoint-N/``, the
    Hugging Face layout) until it completes: the sibling ``OUT.checkpoints``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoints")


def latest_checkpoint(out_dir) -> Path | None:
    """The last complete checkpoint of the stage writing ``out_dir`` (None when none)."""
    done = [p for p in checkpoint_dir(out_dir).glob("checkpoint-*")
            if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1])) if done else None


def _check_reporter(report_to: str) -> None:
    """--report-to names a logger whose package must be installed: one line if it is not."""
    import importlib.util

    package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise BadInput(f"--report-to {report_to}: the {package} package is not installed "
                       f"(pip install {package})")


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise GradprojError(f"{out_dir}: output folder exists and is not empty (use --force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))


def _save_tokenizer(tokenizer, pref: PreferenceSettings, folder: Path) -> None:
    """The tokenizer beside the adapter, carrying the chat template the pairs were formatted
    with (a --chat-template FILE included), so that trl loading it formats them alike."""
    template = resolve_chat_template(pref.chat_template, tokenizer)
    saved = copy.deepcopy(tokenizer)
    saved.chat_template = template
    saved.save_pretrained(str(folder))


def read_train_record(adapter_dir) -> dict | None:
    """The ``train.json`` of an adapter made by gradproj train, or None for another adapter."""
    path = Path(adapter_dir) / "train.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInput(f"{path}: invalid JSON ({err.msg})") from None


def adapter_objective(adapter_dir, record: dict | None = None) -> dict | None:
    """The objective record an adapter was trained with (records before schema 2: DPO with
    the β of its settings); None when the adapter was not made by gradproj train. ``record``:
    its train.json when already read."""
    record = read_train_record(adapter_dir) if record is None else record
    if record is None:
        return None
    if "objective" in record:
        return record["objective"]
    return {"name": "dpo", "beta": float(record.get("settings", {}).get("beta", 0.1)),
            "params": {}}


def check_adapter_objective(adapter_dir, objective: Objective, force: bool = False,
                            template: dict | None = None) -> None:
    """Refuse ``objective`` for an adapter trained with another one, and ``template`` (a chat
    template record, :meth:`PreferenceSettings.template_record`) for an adapter trained on
    pairs formatted with another template (one line, exit 2)."""
    if adapter_dir is None:
        return
    record = read_train_record(adapter_dir)
    if record is None:              # not made by gradproj train: nothing recorded to check
        return
    check_objective(adapter_objective(adapter_dir, record), objective, f"adapter {adapter_dir}",
                    force)
    trained_with = record.get("chat_template")
    if template is not None and trained_with is not None and trained_with != template:
        raise IncompatibleStore(f"adapter {adapter_dir}: trained on pairs formatted with chat "
                                f"template {trained_with}, requested {template} (--chat-template)")


def _checkpointing(config_cls, loaded: LoadedModel) -> dict:
    """DPOConfig kwargs of activation checkpointing (non-reentrant, from the model settings),
    under the name this transformers version uses (``activation_checkpointing`` from v5)."""
    on = loaded.settings.grad_checkpointing
    name = ("activation_checkpointing" if "activation_checkpointing"
            in getattr(config_cls, "__dataclass_fields__", {}) else "gradient_checkpointing")
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def train_adapter(loaded: LoadedModel, pairs: list[PreferencePair], settings: TrainSettings,
                  out_dir, *, pref: PreferenceSettings = PreferenceSettings(),
                  overwrite: bool = False, progress: bool = True,
                  force_objective: bool = False,
                  on_step: Callable[[int], None] | None = None,
                  reference: Mapping[str, tuple[float, float]] | None = None,
                  resume: bool = False) -> TrainResult:
    """Train ``loaded.model``'s adapter in place on ``pairs`` with ``pref``'s objective and save
    it to ``out_dir``; continuing an adapter of another objective needs ``force_objective``.
    ``on_step(step)`` runs after every optimizer step (1, 2, ...), the model in eval mode and
    under no_grad (e.g. to evaluate held-out pairs as training goes).

    ``reference``: pair id → (log π_ref(chosen), log π_ref(rejected)), computed beforehand
    (e.g. once for many runs on subsets of the same pairs, :func:`reference_logprobs`); then no
    reference forward pass is made while training. It must hold every pair that is trained on.

    The folder appears complete or not at all: everything is written to a temporary sibling and
    renamed at the end. With ``settings.save_steps`` checkpoints go to ``OUT.checkpoints/
    checkpoint-N/`` as training runs; ``resume`` continues from the last of them (model,
    optimizer, scheduler, RNG and data order restored by the Trainer, so the adapter equals an
    uninterrupted run's) and starts afresh when there is none. The checkpoints are removed once
    the folder is complete. ``loaded.settings.max_tokens`` cuts each batch into micro-batches
    of that many padded tokens without changing the step (:func:`micro_batches`).

    Under torchrun (gradproj.core.distributed initialised) training is data-parallel (DDP
    through trl/accelerate): each rank takes ``batch_size / world`` pairs of every step, so a
    step sees the same ``batch_size`` pairs as one process; only rank 0 writes ``out_dir`` and
    every rank returns after it is there, its in-memory adapter equal to the saved one.
    """
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import DPOConfig

    objective = pref.objective()
    check_adapter_objective(loaded.settings.adapter, objective, force_objective,
                            pref.template_record(loaded.tokenizer))
    out_dir = Path(out_dir)
    world, main = distributed.world_size(), distributed.is_main()
    if settings.batch_size % world:
        raise BadInput(f"--batch-size {settings.batch_size} does not divide among {world} "
                       "processes (the global batch is split evenly across ranks)")
    tokenized = pref.tokenize(pairs, loaded.tokenizer)
    if not tokenized.pairs:
        raise GradprojError("no pair left to train on after tokenization")
    for pid, why in tokenized.excluded.items():
        log.warning("pair %s excluded: %s", pid, why)
    rows = {"prompt_ids": [list(p.prompt_ids) for p in tokenized.pairs],
            "chosen_ids": [list(p.chosen_ids) for p in tokenized.pairs],
            "rejected_ids": [list(p.rejected_ids) for p in tokenized.pairs],
            "row": list(range(len(tokenized.pairs)))}
    trl_loss = settings.trl_loss and objective.trl_matches()   # else gradproj's loss
    if reference is not None and objective.needs_reference:
        if trl_loss:
            raise ValueError("precomputed reference log-probs need gradproj's loss "
                             "(trl_loss=False)")
        missing = [p.id for p in tokenized.pairs if p.id not in reference]
        if missing:
            raise ValueError(f"no reference log-probs for {len(missing)} pairs, e.g. "
                             f"{missing[0]!r}")
        rows["ref_chosen_logps"] = [float(reference[p.id][0]) for p in tokenized.pairs]
        rows["ref_rejected_logps"] = [float(reference[p.id][1]) for p in tokenized.pairs]
    if world > 1 and main and len(tokenized.pairs) % settings.batch_size:
        log.warning("%d pairs are not a multiple of --batch-size %d: across %d ranks the last "
                    "step is filled with pairs from the start of the epoch (accelerate's even "
                    "batches), so it differs from a one-process run's", len(tokenized.pairs),
                    settings.batch_size, world)
    checkpoints = checkpoint_dir(out_dir)
    resume_from = latest_checkpoint(out_dir) if resume else None
    _check_reporter(settings.report_to)
    tmp = _prepare_out(out_dir, overwrite)
    try:
        config = DPOConfig(
            output_dir=str(checkpoints), num_train_epochs=settings.epochs,
            learning_rate=settings.lr, per_device_train_batch_size=settings.batch_size // world,
            gradient_accumulation_steps=settings.grad_accum, beta=objective.beta,
            seed=settings.seed, data_seed=settings.seed, lr_scheduler_type=settings.scheduler,
            warmup_steps=settings.warmup_ratio, max_length=None, logging_steps=1,
            save_strategy="steps" if settings.save_steps else "no",
            save_steps=settings.save_steps or 500, report_to=settings.report_to,
            **_checkpointing(DPOConfig, loaded),
            use_cpu=loaded.device.type == "cpu", dataloader_num_workers=0,
            disable_tqdm=True, loss_type=[objective.trl_loss_type or "sigmoid"],
            # bfloat16 autocast where the base is bfloat16 on a GPU (LoRA weights stay fp32)
            bf16=loaded.dtype_name == "bfloat16" and loaded.device.type == "cuda", fp16=False)
        trainer_cls, record_cls = _trainer_class(objective, trl_loss, loaded.settings.max_tokens)
        record = record_cls(progress and main, on_step, loaded.model)
        if resume_from is not None:     # the steps before the checkpoint, from its log
            record.restore(resume_from)
        undo = trainer_changes_undoer(loaded.model)
        trainer = trainer_cls(model=loaded.model, args=config, train_dataset=Dataset.from_dict(rows),
                              processing_class=loaded.tokenizer, callbacks=[record])
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        batches: list[list[str]] = []
        collate = trainer.data_collator

        def collate_recording(examples):       # records which pairs each batch holds
            batches.append([tokenized.pairs[e.pop("row")].id for e in examples])
            return collate(examples)

        trainer.data_collator = collate_recording
        # trl copies a pretrained adapter into a frozen "ref" adapter and uses it as π_ref. gradproj's
        # reference is the base model (adapter disabled) at every stage, as in the method.
        if "ref" in getattr(loaded.model, "peft_config", {}):
            loaded.model.delete_adapter("ref")
        start = time.perf_counter()
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:
            undo()
        seconds = time.perf_counter() - start
        loaded.model.eval()
        optimizer = trainer.optimizer
        if world > 1:       # drop the DDP wrapper: its gradient hooks must not outlive training
            trainer.accelerator.free_memory()
            del trainer
            import gc
            gc.collect()
        if not main:        # rank 0 writes the folder; the others keep their equal weights
            shutil.rmtree(tmp, ignore_errors=True)
            distributed.barrier()
            return TrainResult(out_dir, len(record.losses), record.losses, seconds,
                               len(tokenized.pairs), tokenized.excluded, batches)
        loaded.model.save_pretrained(str(tmp))
        _save_tokenizer(loaded.tokenizer, pref, tmp)
        save_optimizer_state(optimizer, loaded.lora_parameters(), tmp / OPTIMIZER_FILE)
        (tmp / "lr_schedule.json").write_text(json.dumps({"lr": record.lrs}))
        info = {
            "schema_version": TRAIN_SCHEMA, "objective": objective.settings(),
            "preference": pref.to_dict(), "settings": settings.to_dict(),
            "chat_template": pref.template_record(loaded.tokenizer),
            "model": {**loaded.settings.to_dict(), "dtype": loaded.dtype_name},
            "base_fingerprint": loaded.base_fingerprint,
            "adapter_fingerprint": loaded.adapter_fingerprint(),
            "data_fingerprint": data_fingerprint(pairs), "n_pairs": len(tokenized.pairs),
            "n_truncated": tokenized.n_truncated, "excluded": tokenized.excluded,
            "steps": len(record.losses), "losses": record.losses, "seconds": seconds,
            "resumed_from": (int(resume_from.name.split("-")[-1]) if resume_from is not None
                             else None),
        }
        (tmp / "train.json").write_text(json.dumps(info, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
        if settings.report_to == "none":    # the stage is complete: its checkpoints are spent
            shutil.rmtree(checkpoints, ignore_errors=True)
        else:                               # keep the logs, not the checkpoints
            for ckpt in checkpoints.glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    distributed.barrier()
    return TrainResult(out_dir, len(record.losses), record.losses, seconds,
                       len(tokenized.pairs), tokenized.excluded, batches)
