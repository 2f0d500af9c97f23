"""benchmarks.harness.measure, .querycost and .tiny (no downloaded model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.harness import measure
from benchmarks.harness import querycost
from benchmarks.harness import tiny


def test_median_timed_and_interleaved_rotation():
    assert measure.median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    assert math.isnan(measure.median([float("nan")]))
    seconds, out = measure.timed(lambda: 41 + 1)
    assert out == 42 and seconds >= 0
    order = []

    def variant(name):
        return lambda: order.append(name) or 1.0

    got = measure.interleaved({n: variant(n) for n in "abc"}, 3, log=lambda _: None)
    assert order == list("abc" "bca" "cab")          # rotated by one each repeat
    assert got == {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}


def test_quiet_sets_threads_and_logging_and_restores_them():
    import logging
    import warnings

    import torch

    before, lg = torch.get_num_threads(), logging.getLogger("trl")
    lg.setLevel(logging.INFO)
    with measure.quiet(threads=1):
        assert torch.get_num_threads() == 1 and lg.level == logging.ERROR
        warnings.warn("hidden", UserWarning, stacklevel=1)      # ignored inside
    assert torch.get_num_threads() == before and lg.level == logging.INFO
    lg.setLevel(logging.NOTSET)


def test_process_memory_and_peak_sampler():
    status = measure.proc_status()
    assert status["VmRSS"] > 0 and status["VmHWM"] >= status["VmRSS"]
    before = measure.proc_status(("RssAnon",))["RssAnon"]
    with measure.PeakSampler(interval=0.001) as sampler:
        block = np.ones(64 * 2**20 // 8)             # 64 MiB, every page written
        del block
    assert sampler.peak["RssAnon"] - before >= 48 * 2**20
    info = measure.machine_info(".", packages=("numpy",))
    assert info["nproc"] >= 1 and info["numpy"] == np.__version__
    assert measure.machine_line(info).startswith(f"{info['nproc']} × ")


def test_query_cost_on_a_random_store(tmp_path):
    written = querycost.random_store(tmp_path / "s", n=300, k=64, shard_rows=128)
    assert written["bytes"] == 300 * 64 * 2 and written["disk_bytes"] > written["bytes"]
    for query in querycost.QUERIES:
        res = querycost.query_cost(tmp_path / "s", query, repeats=1, m=8, top_k=3)
        assert res["n"] == 300 and len(res["times"]) == 2
        assert res["rel_err"] < 1e-5, query          # against float64 on the first rows
        assert res["warm_median"] == res["times"][1]
    lim = {"bandwidth": 1e9, "matmul_flops": 1e10}
    r = {"query": "matvec", "warm_median": 0.5, "first": 1.0}
    querycost.limit_fractions(r, n=1000, k=64, m=8, lim=lim)
    assert r == pytest.approx({"query": "matvec", "warm_median": 0.5, "first": 1.0,
                               "bytes_frac": 1000 * 64 * 2 / 0.5 / 1e9,
                               "bytes_frac_first": 1000 * 64 * 2 / 1.0 / 1e9,
                               "flop_frac": 2 * 1000 * 64 * 8 / 0.5 / 1e10})


def test_merge_results_keeps_the_parts_a_run_skipped():
    old = {"synthetic": [1], "smollm2": {"a": 1}, "limits": {"bw": 2}, "machine": "old",
           "quick": True, "k": 8192}
    only_smollm = {"smollm2": {"a": 2}, "machine": "new", "limits": {"bw": 3}, "k": 8192}
    merged = querycost.merge_results(only_smollm, old)
    assert merged == {"smollm2": {"a": 2}, "synthetic": [1], "limits": {"bw": 2},
                      "machine": "old", "quick": True, "k": 8192}
    assert only_smollm["machine"] == "new"           # the argument is left alone
    only_synthetic = {"synthetic": [4], "machine": "new"}
    assert querycost.merge_results(only_synthetic, old) == {
        "synthetic": [4], "machine": "new", "smollm2": {"a": 1}}


def test_tiny_tokenizer_is_the_test_helpers_and_the_model_loads(tmp_path):
    from gradproj.core.model import ModelSettings, load_model

    lib = tiny.char_tokenizer()
    # one token per character, the role markers whole; ids: 7 specials, then string.printable
    assert lib.convert_ids_to_tokens(lib("<user>hi 2")["input_ids"]) == ["<user>", "h", "i",
                                                                         " ", "2"]
    assert lib.convert_tokens_to_ids(["<pad>", "<eos>", "0", "a"]) == [0, 3, 7, 17]
    assert lib.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False,
                                   add_generation_prompt=True) == "<user>a<eos><assistant>"
    loaded = load_model(ModelSettings(model=tiny.save_tiny_llama(tmp_path / "m", seed=1),
                                      device="cpu"))
    assert loaded.model.config.hidden_size == 64 and loaded.tokenizer.pad_token_id == 0


def test_smollm2_layout_and_random_model():
    from gradproj.gradients.perpair import lora_layout

    assert sum(n for _, n in tiny.smollm2_lora_layout()) == 460_800
    model = tiny.random_smollm2("cpu", layers=1)
    assert lora_layout(model) == tiny.smollm2_lora_layout(layers=1)
    pairs = tiny.random_token_pairs(3, seed=2, vocab=50, lengths=(2, 4))
    assert [p.id for p in pairs] == ["pair-0", "pair-1", "pair-2"]
    assert all(2 <= len(p.chosen_ids) <= 4 and max(p.chosen_ids) < 50 for p in pairs)
    assert tiny.random_token_pairs(3, seed=2, vocab=50, lengths=(2, 4)) == pairs
