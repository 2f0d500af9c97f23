"""The README's Python example runs as written (on a tiny model instead of SmolLM2), so it
cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import random_rows, write_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(marker: str) -> str:
    [code] = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if marker in b]
    return code


def test_readme_python_example_runs_as_written(tiny_llama, tmp_path, monkeypatch, capsys):
    code = _block("from gradproj import")
    assert code.count('model="smollm2"') == 1
    code = code.replace('model="smollm2"', f'model="{tiny_llama}", device="cpu"')
    monkeypatch.chdir(tmp_path)
    write_jsonl("train.jsonl", random_rows(12))
    write_jsonl("val.jsonl", random_rows(4, seed=1))
    write_jsonl("test.jsonl", random_rows(4, seed=2))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["inf"].scores) == 12 and len(scope["table"].ids) == 12
    assert 0 < len(scope["chosen"].kept) < 12
    assert "accuracy" in capsys.readouterr().out


def test_readme_trl_hand_off_runs_as_written(tiny_llama, tmp_path, monkeypatch):
    """`gradproj select`, then the README's trl snippet (on the CPU, two steps)."""
    from click.testing import CliRunner

    from gradproj.cli import main

    code = _block("DPOTrainer(")
    config = 'DPOConfig(output_dir="runs/dpo", precompute_ref_log_probs=True)'
    assert code.count(config) == 1
    code = code.replace(config, config[:-1] + ", use_cpu=True, bf16=False, max_steps=2, "
                                              "report_to='none')")
    monkeypatch.chdir(tmp_path)
    write_jsonl("train.jsonl", random_rows(12))
    write_jsonl("val.jsonl", random_rows(4, seed=1))
    res = CliRunner().invoke(main, ["select", "--model", tiny_llama, "--device", "cpu",
                                    "--train", "train.jsonl", "--val", "val.jsonl",
                                    "--out", "runs/sel", "--method", "irm"])
    assert res.exit_code == 0, res.output
    scope = {"BASE": tiny_llama}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["trainer"].state.global_step == 2
