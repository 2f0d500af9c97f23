"""The benchmark pages (benchmarks/pages.py, renderers in benchmarks.harness.suite / .hh / .tables)
rebuild from the committed JSON, and the evidence suite's record (benchmarks/run_suite.py)."""

from __future__ import annotations

from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


DOCS = ROOT / "docs" / "benchmarks"
COMMITTED = ("bench_lds.json", "bench_fidelity.json", "bench_learnability.json",
             "bench_dynamics.json")


def test_pages_rebuild_from_the_committed_results(tmp_path):
    """Every committed JSON has a page, and the page holds its numbers as the JSON has them:
    every rule, noise rate and learnability row (renderers moved from the old report)."""
    import json
    import shutil

    from benchmarks import pages

    names = sorted(p.name for p in DOCS.glob("*.json"))
    assert names and all(pages.page_of(n[:-5]) is not None for n in names)
    for name in names:
        shutil.copy(DOCS / name, tmp_path / name)
    written = pages.write_pages(tmp_path)
    assert sorted(p.name for p in written) == [n[:-5] + ".md" for n in names]
    select = json.loads((DOCS / "bench_select_bigbench.json").read_text())
    text = (tmp_path / "bench_select_bigbench.md").read_text()
    for r in select["rules"]:
        assert f"| θ + {r['rule']} | {r['kept']:.0f} | " in text
    for n in select["noise"].values():
        a = n["auroc_clean_vs_flipped"]
        assert (f"| {n['flip']:.0%} | {n['n_flipped']} | {a['if']:.3f} | {a['lossdiff']:.3f} | "
                f"{a['irm']:.3f} | ") in text
    c = select["correlations"]["lossdiff"]
    assert f"| lossdiff | {c['pearson_if']:.3f} (" in text
    assert "Δ policy acc" not in text                # those results have no paired differences
    lds = json.loads((DOCS / "bench_lds.json").read_text())
    assert lds["table"] in (tmp_path / "bench_lds.md").read_text()
    rows = json.loads((DOCS / "bench_learnability.json").read_text())["rows"]
    text = (tmp_path / "bench_learnability.md").read_text()
    # the committed file's first row is the generated task: 96 / 48 pairs, θ reward accuracy
    # 0.604, not learnable
    assert rows[0]["source"] == "generated" and not rows[0]["learnable"]
    assert "| generated | 96 / 48 | 0.604 | 0.604 | 0.750 | +0.118 | 0.693 → 0.647 | no |" in text
    for r in rows:
        assert (f"| {r['source']} | {r['n_train']} / {r['n_test']} | "
                f"{r['base']['policy_accuracy']:.3f} | {r['theta']['accuracy']:.3f} | ") in text
    index = (tmp_path / "README.md").read_text()
    assert all(f"({p.name})" in index for p in written)


def test_committed_pages_are_the_generated_ones(tmp_path):
    """docs/benchmarks/*.md are what ``python -m benchmarks.pages`` writes from the JSON there
    (nobody edited a page by hand, and no JSON changed without its page)."""
    import shutil

    from benchmarks import pages

    for path in DOCS.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
        if path.with_suffix(".png").is_file():
            shutil.copy(path.with_suffix(".png"), tmp_path / path.with_suffix(".png").name)
    for page in pages.write_pages(tmp_path) + [tmp_path / "README.md"]:
        assert page.read_text() == (DOCS / page.name).read_text(), page.name


def test_lds_table_is_the_committed_one():
    """benchmarks.harness.tables.lds_table reproduces bench_lds's committed table exactly."""
    import json

    from benchmarks.harness.tables import lds_table

    data = json.loads((DOCS / "bench_lds.json").read_text())
    assert lds_table(data["lds"]) == data["table"]


def test_projection_tables_are_the_committed_ones():
    """tables.speed_table and .fidelity_table reproduce bench_projection's committed tables."""
    import json

    from benchmarks.harness.tables import fidelity_table, speed_table

    data = json.loads((DOCS / "bench_projection.json").read_text())
    ks = [int(k) for k in data["args"]["fid_ks"].split(",")]
    with_std = len(data["args"]["fid_seeds"].split(",")) > 1
    assert fidelity_table(data["fidelity"], ks, with_std) == data["markdown_fidelity"]
    assert speed_table(data["speed"]) == data["markdown_speed"]
    assert "± " in data["markdown_fidelity"] and " ± " not in fidelity_table(
        data["fidelity"], ks, False)


def test_reaggregate_reproduces_the_committed_rules_and_selections():
    """tables.reaggregate (bench_select --replot) recomputes the committed JSON's per-rule
    aggregates from its runs exactly, and an older file's missing selections from the first
    seed's runs."""
    import copy
    import json

    import numpy as np

    from benchmarks.harness.tables import SELECTION_KEYS, reaggregate
    from benchmarks.harness.tables import RULES

    data = json.loads((DOCS / "bench_select_bigbench.json").read_text())
    older = copy.deepcopy(data)
    del older["selections"]
    again = reaggregate(copy.deepcopy(data), RULES)
    assert [r["rule"] for r in again["rules"]] == [r["rule"] for r in data["rules"]]
    for got, want in zip(again["rules"], data["rules"], strict=True):
        assert set(want) <= set(got)           # newer aggregates add the paired difference
        for key, value in want.items():
            assert np.allclose(got[key], value, rtol=1e-9, equal_nan=True) if isinstance(
                value, (float, list)) else got[key] == value, (want["rule"], key)
    assert again["selections"] == data["selections"] and "reaggregated" in again
    rebuilt = reaggregate(older, RULES)["selections"]
    assert set(rebuilt) == set(data["selections"])
    for rule, sel in rebuilt.items():
        assert sel == {k: data["selections"][rule][k] for k in SELECTION_KEYS}


def test_replace_between_keeps_the_text_around_the_markers(tmp_path):
    from benchmarks.harness.tables import replace_between

    path = tmp_path / "r.md"
    path.write_text("head\n<!-- b -->\nold 1\nold 2\n<!-- e -->\ntail <!-- b -->\n")
    assert replace_between(path, "<!-- b -->", "<!-- e -->", "\nnew\n\n")
    assert path.read_text() == "head\n<!-- b -->\nnew\n<!-- e -->\ntail <!-- b -->\n"
    assert not replace_between(path, "<!-- b -->", "<!-- z -->", "x")   # no end marker
    assert not replace_between(tmp_path / "missing.md", "<!-- b -->", "<!-- e -->", "x")
    assert path.read_text() == "head\n<!-- b -->\nnew\n<!-- e -->\ntail <!-- b -->\n"


def test_present_rules_are_those_with_runs_and_noise_results():
    from benchmarks.harness.tables import present_rules

    res = {"rules": [{"rule": r} for r in ("all", "tif", "random", "lossdiff-irm")],
           "noise": {"0.25": {"rules": {"tif": {}, "random": {}, "lossdiff-irm": {}}},
                     "0.40": {"rules": {"tif": {}, "lossdiff-irm": {}}}}}
    assert present_rules(res) == ["tif", "lossdiff-irm"]     # RULES order, no "all"
    assert present_rules({"rules": [{"rule": "reward-gap"}, {"rule": "top-if"}]}) == [
        "top-if", "reward-gap"]


def test_ablation_lines_give_every_metric_and_the_paired_intervals_by_hand():
    """tables.ablation_lines on hand-made runs: mean ± std per metric, and the seed-paired
    difference to all with its t interval computed here by hand (t_{0.975, 2} = 4.303)."""
    from benchmarks.harness.tables import ablation_lines

    def run(rule, seed, loss):
        return {"rule": rule, "seed": seed, "kept": 10 if rule == "all" else 6,
                "accuracy": 0.5, "policy_accuracy": 0.5, "mean_margin": 0.0,
                "mean_loss": loss}

    runs = [run("all", s, 0.6) for s in range(3)] + [
        run("tif", s, 0.6 - d) for s, d in enumerate((0.1, 0.2, 0.3))]
    text = "\n".join(ablation_lines({"runs": runs}, ["base", "all", "tif"]))
    assert "| tif | 6 | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.000 ± 0.000 | 0.400 ± 0.100 |" in text
    half = 4.302653 * 0.1 / 3 ** 0.5
    zero = "+0.000 [+0.000, +0.000]"
    assert (f"| tif | {zero} | {zero} | {zero} | -0.200 [{-0.2 - half:+.3f}, "
            f"{-0.2 + half:+.3f}] |") in text
    assert "Paired difference to `random`" not in text          # random did not run


def test_suite_record_keeps_every_steps_last_run():
    from helpers import load_benchmark

    suite_script = load_benchmark("run_suite")
    old = [{"step": "a", "seconds": 1, "machine": {"commit": "x"}},
           {"step": "b", "seconds": 2, "machine": {"commit": "x"}}]
    merged = suite_script.merge_runs(old, [{"step": "b", "seconds": 5},
                                           {"step": "c", "seconds": 7}], {"commit": "y"})
    assert [(r["step"], r["seconds"], r["machine"]["commit"]) for r in merged] == [
        ("a", 1, "x"), ("b", 5, "y"), ("c", 7, "y")]
    sets = suite_script.steps(ROOT / "docs", quick=False, archive=None)
    lanes, merges = sets["main"]
    assert sets["bigbench"] == []           # no BIG-bench step without its archive
    # every seed of each setting once, dealt to two lanes; each setting joined at the end
    seeds = {"clean": [], "flips": []}
    for lane in lanes:
        for name, argv in lane:
            setting = "flips" if "0.25" in argv else "clean"
            seeds[setting] += [int(x) for x in argv[argv.index("--seeds") + 1:argv.index("--work")]]
            assert int(argv[argv.index("--n-test") + 1]) >= 200
    assert len(lanes) == 2 and all(sorted(v) == [0, 1, 2, 3, 4] for v in seeds.values())
    assert [argv[-1].rsplit("/", 1)[-1] for (name, argv), in merges] == [
        "bench_hh_clean.json", "bench_hh_flips.json"]
