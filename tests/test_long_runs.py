"""Long runs: a token budget cuts batches into micro-batches without changing the step, and a
training stage killed after a checkpoint resumes to the adapter of an uninterrupted run
(train and select alike)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import random_rows, write_jsonl

from gradproj.cli import main
from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.training.train import (
    TrainSettings,
    checkpoint_dir,
    latest_checkpoint,
    micro_batches,
    train_adapter,
)


def _lora(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def _adapter(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "adapter_model.safetensors"))


def test_micro_batches_partition_a_batch_within_the_budget():
    ids = torch.arange(2 * 4 * 6).reshape(8, 6)
    lengths = [6, 2, 4, 3, 5, 2, 4, 1]            # chosen rows 0-3, rejected rows 4-7
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    inputs = {"input_ids": ids, "attention_mask": mask, "completion_mask": mask,
              "ref_chosen_logps": torch.tensor([0., 1., 2., 3.])}
    parts = micro_batches(inputs, max_tokens=16)   # pair lengths 6, 2, 4, 3
    assert [p["weight"] for p in parts] == [0.25, 0.5, 0.25]
    assert [p["ref_chosen_logps"].tolist() for p in parts] == [[0.], [2., 3.], [1.]]
    first, second = parts[0], parts[1]
    assert first["input_ids"].tolist() == [ids[0].tolist(), ids[4].tolist()]  # its two rows
    assert second["input_ids"].tolist() == [ids[2, :4].tolist(), ids[3, :4].tolist(),
                                            ids[6, :4].tolist(), ids[7, :4].tolist()]
    assert all(2 * len(p["ref_chosen_logps"]) * p["input_ids"].shape[1] <= 16 or
               len(p["ref_chosen_logps"]) == 1 for p in parts)


def test_a_token_budget_keeps_the_effective_batch(tiny_llama, tmp_path, monkeypatch):
    """The same batch with and without a budget that splits it into micro-batches: the same
    adapter (within 1e-5), and the budget really did split the forward passes."""
    from gradproj.training import train as train_mod

    pairs = pairs_from_records(random_rows(12))
    settings = TrainSettings(epochs=2, lr=1e-2, batch_size=4, seed=1)
    parts = []
    real = train_mod.micro_batches
    monkeypatch.setattr(train_mod, "micro_batches",
                        lambda inputs, budget: parts.append(real(inputs, budget)) or parts[-1])
    got = {}
    for budget in (None, 40):
        loaded = load_model(ModelSettings(model=tiny_llama, device="cpu", max_tokens=budget))
        train_adapter(loaded, pairs, settings, tmp_path / f"b{budget}", progress=False)
        got[budget] = _lora(loaded.model)
    assert len(parts) == 6 and all(len(p) > 1 for p in parts)       # 6 steps, each split
    for name, value in got[None].items():
        assert torch.allclose(got[40][name], value, rtol=0, atol=1e-5), name


def _train_cmd(model, data, out, *extra):
    return [sys.executable, "-m", "gradproj", "train", "--model", model, "--device", "cpu",
            "--data", data, "--out", str(out), "--epochs", "3", "--batch-size", "2", "--lr",
            "0.01", "--seed", "3", "--save-steps", "2", *extra]


def _kill_after_first_checkpoint(cmd, stage_out) -> None:
    """Start ``cmd``, SIGKILL it as soon as its first checkpoint is complete."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 120
    while latest_checkpoint(stage_out) is None:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not Path(stage_out, "adapter_model.safetensors").exists()   # it was cut


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_adapter(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", random_rows(40))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(_train_cmd(tiny_llama, data, whole), check=True, capture_output=True)
    _kill_after_first_checkpoint(_train_cmd(tiny_llama, data, cut), cut)
    step = int(latest_checkpoint(cut).name.split("-")[-1])
    assert 2 <= step < 60
    res = subprocess.run(_train_cmd(tiny_llama, data, cut, "--resume"), capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _adapter(whole), _adapter(cut)
    for name in a:
        assert torch.allclose(b[name], a[name], rtol=1e-4, atol=1e-7), name
    assert not checkpoint_dir(cut).exists()                  # spent once the stage completes
    record = json.loads((cut / "train.json").read_text())
    assert record["resumed_from"] == step              # it continued, it did not start over
    assert record["steps"] == 60 == len(json.loads((whole / "train.json").read_text())["losses"])
    assert record["losses"] == pytest.approx(
        json.loads((whole / "train.json").read_text())["losses"], rel=1e-4)


@pytest.mark.slow
def test_select_resume_picks_up_the_cut_stage(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", random_rows(40))
    val = write_jsonl(tmp_path / "val.jsonl", random_rows(8, seed=1))
    args = ["select", "--model", tiny_llama, "--device", "cpu", "--train", train, "--val", val,
            "--epochs", "3", "--batch-size", "2", "--lr", "0.01", "--seed", "3",
            "--save-steps", "2", "--method", "irm"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert CliRunner().invoke(main, [*args, "--out", str(whole)]).exit_code == 0
    _kill_after_first_checkpoint([sys.executable, "-m", "gradproj", *args, "--out", str(cut)],
                                 cut / "theta")
    step = int(latest_checkpoint(cut / "theta").name.split("-")[-1])
    res = CliRunner().invoke(main, [*args, "--out", str(cut), "--resume"])
    assert res.exit_code == 0, res.output
    assert json.loads((cut / "theta" / "train.json").read_text())["resumed_from"] == step
    for stage in ("theta", "theta_v"):
        a, b = _adapter(whole / stage), _adapter(cut / stage)
        for name in a:
            assert torch.allclose(b[name], a[name], rtol=1e-4, atol=1e-7), (stage, name)


def test_report_to_a_missing_logger_is_one_line(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", random_rows(4))
    res = CliRunner().invoke(main, ["train", "--model", tiny_llama, "--device", "cpu", "--data",
                                    data, "--out", str(tmp_path / "o"), "--report-to", "wandb"])
    if res.exit_code == 0:      # wandb happens to be installed: nothing to refuse
        pytest.skip("wandb is installed")
    assert res.exit_code == 2
    assert res.stderr.strip() == ("gradproj: error: --report-to wandb: the wandb package is not "
                                  "installed (pip install wandb)")
