"""gradproj plan: exact counts (parameters, LoRA size, store bytes) against models and a store
built here, the peak-memory estimate against the measured peak of torch's allocations (within
25%) at several sizes, batching as the store batches, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gradproj.cli import main
from gradproj.plan import (
    Architecture,
    Precision,
    format_plan,
    lora_size,
    make_plan,
    memory,
    padded_batches,
    read_throughput,
    stage_flops,
    store_bytes,
    write_throughput,
)

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny(model_type="llama", **over) -> dict:
    cfg = dict(model_type=model_type, vocab_size=300, hidden_size=48, intermediate_size=80,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, tie_word_embeddings=False)
    cfg.update(over)
    return cfg


def built(cfg: dict, device="cpu"):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device(device):
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))


@pytest.mark.parametrize("cfg", [
    tiny(), tiny(tie_word_embeddings=True, head_dim=16), tiny(attention_bias=True, mlp_bias=True),
    tiny("qwen2"), tiny("mistral", num_key_value_heads=4)],
    ids=["llama", "tied-head-dim", "biases", "qwen2", "mistral"])
def test_parameter_count_is_the_models(cfg):
    model = built(cfg)
    assert Architecture.from_config(cfg).parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,published", [("llama-3.2-1b", 1_235_814_400),
                                            ("qwen2.5-1.5b", 1_543_714_304),
                                            ("llama-3.1-8b", 8_030_261_248)])
def test_shipped_configs_count_the_published_parameters(name, published):
    cfg = json.loads((CONFIGS / f"{name}.json").read_text())
    model = built(cfg, device="meta")    # shapes only, no memory
    assert sum(p.numel() for p in model.parameters()) == published
    assert Architecture.from_config(cfg).parameters() == published


@pytest.mark.parametrize("targets,r", [(("q_proj", "v_proj"), 8), (ALL, 4), (("down_proj",), 2)])
def test_lora_size_is_the_peft_models(targets, r):
    from peft import LoraConfig, get_peft_model

    cfg = tiny("qwen2")
    model = get_peft_model(built(cfg), LoraConfig(r=r, target_modules=list(targets),
                                                  task_type="CAUSAL_LM"))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora_size(Architecture.from_config(cfg), targets, r) == lora


def test_store_bytes_is_what_a_store_holds(tiny_llama, sample_jsonl, tmp_path):
    from gradproj.core.data import load_pairs
    from gradproj.core.model import ModelSettings, load_model
    from gradproj.store.build import StoreSettings, build_store

    store = build_store(load_model(ModelSettings(model=tiny_llama, device="cpu")),
                        load_pairs(sample_jsonl), StoreSettings(proj_dim=96, shard_size=3),
                        tmp_path / "store", progress=False)
    held = sum(np.load(f).nbytes for f in (tmp_path / "store" / "shards").glob("*.npy"))
    assert held == store_bytes(len(store), 96)


def test_padded_batches_are_the_stores_batches():
    from gradproj.core.tokens import TokenizedPair, longest_row, token_batches

    g = np.random.default_rng(0)
    pairs = [TokenizedPair(str(i), (1,) * int(g.integers(1, 20)), (2,) * int(g.integers(1, 30)),
                           (3,) * int(g.integers(1, 30))) for i in range(37)]
    lengths = [longest_row(p) for p in pairs]
    for max_tokens in (None, 64, 200):
        got = [tuple(b.input_ids.shape) for _, b in token_batches(pairs, 4, 0, max_tokens)]
        assert padded_batches(lengths, 4, max_tokens) == got


def test_checkpointing_and_4bit_lower_the_estimate():
    arch = Architecture.from_config(json.loads((CONFIGS / "llama-3.1-8b.json").read_text()))
    kw = dict(pairs=1, tokens=2048, targets=("q_proj", "v_proj"), r=8)
    full = memory(arch, "train", Precision("bfloat16"), **kw).peak
    ckpt = memory(arch, "train", Precision("bfloat16", checkpointing=True), **kw).peak
    q4 = memory(arch, "train", Precision("bfloat16", "4bit", True), **kw).peak
    assert q4 < ckpt < full
    # the 4-bit base holds the layers' linears in ≈0.516 bytes, the rest in bf16
    w = memory(arch, "train", Precision("bfloat16", "4bit", True), **kw).terms["weights"]
    quantized = arch.layers * arch.layer_linear_weights()
    assert w == pytest.approx(quantized * (0.5 + 1 / 64 + 4 / (64 * 256))
                              + 2 * (arch.parameters() - quantized))


def test_time_is_flops_over_the_recorded_rate(tmp_path):
    arch = Architecture.from_config(tiny())
    path = tmp_path / "rates.json"
    write_throughput(path, "box", "build", {"flops_per_s": 1e9})
    write_throughput(path, "box", "train", {"flops_per_s": 2e9})
    rates = read_throughput(path)
    assert set(rates["box"]) == {"build", "train"}
    lengths = [10, 30, 20, 5, 7]
    plan = make_plan(arch, source="tiny", targets=("q_proj",), r=2, k=64, lengths=lengths,
                     lengths_from="given", batch_size=2, throughput=rates, machine="box")
    P = lora_size(arch, ("q_proj",), 2)
    batches = [(4, 30), (4, 20), (2, 7)]
    assert plan.batches == batches
    assert plan.seconds["build"] == pytest.approx(
        stage_flops(arch, "build", batches, checkpointing=False, P=P, k=64) / 1e9)
    assert plan.seconds["train"] == pytest.approx(
        stage_flops(arch, "train", batches, checkpointing=False) / 2e9)
    assert "expected time on box" in format_plan(plan)
    assert make_plan(arch, source="tiny", targets=("q_proj",), r=2, k=64, lengths=lengths,
                     lengths_from="given", batch_size=2, throughput=rates,
                     machine="other").seconds == {}


def test_plan_command(tiny_llama, sample_jsonl, tmp_path):
    run = CliRunner().invoke
    res = run(main, ["plan", "--model", tiny_llama, "--data", sample_jsonl, "--lora-r", "4",
                     "--proj-dim", "128", "--throughput", str(tmp_path / "none.json")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((Path(tiny_llama) / "config.json").read_text())
    arch = Architecture.from_config(cfg)
    assert f"parameters {arch.parameters():,}" in res.output
    assert f"P = {lora_size(arch, ('q_proj', 'v_proj'), 4):,}" in res.output
    assert "tokenized with the model's tokenizer" in res.output
    assert "no throughput recorded" in res.output

    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    res = run(main, ["plan", "--model", str(config), "--data", sample_jsonl,
                     "--grad-checkpointing", "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    assert "estimated at 4 characters a token" in res.output
    chosen = [line for line in res.output.splitlines() if "these settings" in line]
    assert len(chosen) == 1 and chosen[0].split()[:2] == ["bfloat16", "on"]

    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    res = run(main, ["plan", "--model", str(gpt2)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"gradproj: error: {gpt2}: plan knows the llama, mistral, qwen2 architectures, "
        "got model_type 'gpt2'"]


def test_gpu_verdict_for_the_readme_8b_recipe():
    """The issue's command: 8 pairs × 2,048 tokens of Llama-3.1-8B in bfloat16 with
    checkpointing on an 80 GiB GPU — the training step does not fit; the plan names settings
    that do, each the largest that fits (one more pair a pass would not)."""
    res = CliRunner().invoke(main, [
        "plan", "--model", str(CONFIGS / "llama-3.1-8b.json"), "--dtype", "bfloat16",
        "--grad-checkpointing", "--max-length", "2048", "--batch-size", "8", "--lora-r", "16",
        "--lora-targets", "q_proj,k_proj,v_proj,o_proj", "--gpu-memory", "80"])
    assert res.exit_code == 0, res.output
    assert "training step  does NOT fit: 86.8 GiB at 8 pairs × 2048 tokens a pass" in res.output
    assert "fits with --max-tokens 28672 (7 pairs a pass; the step keeps its pairs): 77.9 GiB" \
        in res.output
    from gradproj.plan import fit_verdict, load_architecture

    arch, _ = load_architecture(str(CONFIGS / "llama-3.1-8b.json"))
    chosen = Precision("bfloat16", "full", True)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    fits = fit_verdict(arch, gpu_bytes=80 * 2**30, chosen=chosen, pairs=8, tokens=2048,
                       targets=targets, r=16)
    train = fits[0]
    assert not train.fits and train.advice
    for _, need in train.advice:
        assert need <= 80 * 2**30
    # 7 pairs fit, 8 do not: the advice is the largest batch (peaks + the 0.5 GiB runtime)
    peak = lambda b: memory(arch, "train", chosen, pairs=b, tokens=2048, targets=targets,  # noqa: E731
                            r=16).peak + 2**29
    assert peak(7) <= 80 * 2**30 < peak(8)
    ok = fit_verdict(arch, gpu_bytes=140 * 2**30, chosen=chosen, pairs=8, tokens=2048,
                     targets=targets, r=16)
    assert all(f.fits and not f.advice for f in ok)            # an H200 takes it as it is


def test_plan_ships_its_throughput_table():
    from gradproj.plan import THROUGHPUT_FILE, gpu_table

    assert THROUGHPUT_FILE.parent.name == "plan" and THROUGHPUT_FILE.is_file()
    assert read_throughput()                           # a measured machine, from package data
    assert gpu_table()["H100"]["bf16_flops_per_s"] == pytest.approx(989.4e12)


def test_durations_keep_two_or_three_digits():
    from gradproj.plan import duration

    assert [duration(s) for s in (0.4, 12.4, 89, 90, 300, 5399, 5400, 4356)] == [
        "0 s", "12 s", "89 s", "1.5 min", "5.0 min", "90.0 min", "1.50 h", "72.6 min"]
