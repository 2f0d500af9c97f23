"""The hand-off to trl: every input layout, with and without a chat template on the tokenizer,
goes ``gradproj select`` → ``trl.DPOTrainer(train_dataset=load_selection(OUT),
precompute_ref_log_probs=True)`` with no code between them, and trl sees what gradproj scored.

Per cell: trl trains two steps; trl's reference log-probs equal the stored
``gradproj_ref_*_logps`` (a fresh LoRA on the base: trl's reference is the base, as gradproj's);
continuing θ (trl's reference is then a frozen copy of θ), trl's reference equals gradproj's
score-time policy log-probs at θ; trl's tokens equal gradproj's; and the reference forward passes
are counted: one precompute pass over the selection, none while training.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ROW_WORDS, ultrafeedback_like, write_jsonl

from gradproj.attribution.scores import ScoreTable
from gradproj.cli import main
from gradproj.core.data import load_pairs
from gradproj.core.tokens import tokenize_pairs
from gradproj.pipeline.outputs import load_selection

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


def _texts(i, rng):
    prompt = " ".join(rng.choice(ROW_WORDS, size=rng.integers(2, 6)))
    good = " ".join(rng.choice(ROW_WORDS, size=rng.integers(1, 5)))
    return prompt, good, good + " not " + str(rng.choice(ROW_WORDS))


def _layout(kind, root, n, seed):
    """(source, extra CLI args) of n pairs in one of the layouts users hold."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p, c, r = _texts(i, rng)
        if kind == "flat":
            rows.append({"prompt": p, "chosen": " " + c, "rejected": " " + r})
        elif kind == "hh":      # implicit prompt: whole transcripts, as Anthropic publishes them
            head = f"\n\nHuman {p}\n\nAssistant"
            rows.append({"chosen": f"{head} {c}", "rejected": f"{head} {r}"})
        else:                   # chat message lists sharing the prompt messages
            user = {"role": "user", "content": p}
            rows.append({"chosen": [user, {"role": "assistant", "content": c}],
                         "rejected": [user, {"role": "assistant", "content": r}]})
    return write_jsonl(root / f"{kind}{seed}.jsonl", rows), []


LAYOUTS = ["flat", "chat", "hh", "ultrafeedback"]


@pytest.fixture(scope="module", params=[True, False], ids=["template", "no-template"])
def model_dir(request, tiny_llama, tiny_llama_plain):
    return tiny_llama if request.param else tiny_llama_plain


@pytest.mark.parametrize("layout", LAYOUTS)
def test_select_then_trl_with_no_code_between(layout, model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    if layout == "ultrafeedback":
        uf = ultrafeedback_like(tmp_path / "uf", n_train=10, n_test=4)
        train, val = (uf, ["--train-split", "train_prefs"]), (uf, ["--val-split", "test_prefs"])
    else:
        train, val = _layout(layout, tmp_path, 10, 0), _layout(layout, tmp_path, 4, 1)
    conversational = layout in ("chat", "ultrafeedback")
    has_template = AutoTokenizer.from_pretrained(model_dir).chat_template is not None
    args = ["select", "--model", model_dir, "--device", "cpu", "--train", train[0], *train[1],
            "--val", val[0], *val[1], "--out", str(tmp_path / "sel"), "--max-length", "64",
            "--batch-size", "2", "--lr", "0.05", "--method", "lossdiff-irm", "--keep", "0.6"]
    if conversational and not has_template:
        res = CliRunner().invoke(main, args)          # trl could not train these either
        assert res.exit_code == 2
        assert "conversational (message lists) and the tokenizer has no chat template" \
            in res.stderr
        assert not (tmp_path / "sel").exists()        # refused before any work
        template = tmp_path / "chat.jinja"
        template.write_text(TEMPLATE)
        args += ["--chat-template", str(template)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = tmp_path / "sel"

    selected = load_selection(out)
    assert isinstance(selected[0]["chosen"], list) == conversational   # the input's form
    # the tokenizer beside θ carries the template the pairs were formatted with
    tok = AutoTokenizer.from_pretrained(out / "theta")
    calls = {"reference": 0}
    real = DPOTrainer.compute_ref_log_probs

    def counting(self, model, inputs):
        calls["reference"] += 1
        return real(self, model, inputs)

    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", counting)

    def trainer(model, **kw):
        config = DPOConfig(output_dir=str(tmp_path / "trl"), precompute_ref_log_probs=True,
                           per_device_train_batch_size=2, max_steps=2, report_to="none",
                           use_cpu=True, bf16=False, save_strategy="no", logging_steps=1,
                           disable_tqdm=True)
        return DPOTrainer(model=model, args=config, train_dataset=load_selection(out),
                          processing_class=tok, **kw)

    # 1. a fresh LoRA on the base model: trl's reference is the base model, as gradproj's
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    fresh = trainer(AutoModelForCausalLM.from_pretrained(model_dir), peft_config=lora)
    assert calls["reference"] == math.ceil(len(selected) / 2)      # the one precompute pass
    theirs = fresh.train_dataset
    # fp32 sums in another order (trl's fused head): equal to 1e-4 relative
    np.testing.assert_allclose(theirs["ref_chosen_logps"], selected["gradproj_ref_chosen_logps"],
                               rtol=1e-4, atol=0)
    np.testing.assert_allclose(theirs["ref_rejected_logps"],
                               selected["gradproj_ref_rejected_logps"], rtol=1e-4, atol=0)
    # the same tokens were scored as are trained
    split = "train_prefs" if layout == "ultrafeedback" else "train"
    pairs = {p.id: p for p in load_pairs(train[0], split=split)}
    template_arg = args[args.index("--chat-template") + 1] if "--chat-template" in args else "auto"
    ours = tokenize_pairs([pairs[i] for i in selected["id"]], tok, 64,
                          chat_template=template_arg).pairs
    assert [list(p.chosen_ids) for p in ours] == theirs["chosen_ids"]
    assert [list(p.prompt_ids) for p in ours] == theirs["prompt_ids"]
    before = calls["reference"]
    fresh.train()
    assert fresh.state.global_step == 2 and calls["reference"] == before   # none while training

    # 2. continuing θ: trl's reference is a frozen copy of θ, so it equals gradproj's score-time
    # policy log-probs at θ
    theta = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir),
                                      str(out / "theta"), is_trainable=True)
    cont = trainer(theta)
    table = ScoreTable.read(out / "scores.parquet")
    pos = {pid: n for n, pid in enumerate(table.ids)}
    rows = [pos[i] for i in selected["id"]]
    np.testing.assert_allclose(cont.train_dataset["ref_chosen_logps"],
                               table["policy_chosen_logps"][rows], rtol=1e-4, atol=0)
    np.testing.assert_allclose(cont.train_dataset["ref_rejected_logps"],
                               table["policy_rejected_logps"][rows], rtol=1e-4, atol=0)
    cont.train()
    assert cont.state.global_step == 2


def test_plain_text_scores_do_not_depend_on_the_tokenizers_template(tiny_llama, tmp_path):
    """The same plain-text pair, a tokenizer with a chat template and one without: the same
    reference log-probs under --chat-template auto (plain text is never templated)."""
    from gradproj.core.data import pairs_from_records
    from gradproj.core.logprobs import pair_logprobs
    from gradproj.core.model import ModelSettings, load_model

    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    pairs = pairs_from_records([{"prompt": "what color is the cat", "chosen": " the cat is red",
                                 "rejected": " blue"}])
    plain = type(loaded.tokenizer).from_pretrained(tiny_llama)
    plain.chat_template = None
    got = []
    for tok in (loaded.tokenizer, plain):
        assert bool(tok.chat_template) == (tok is loaded.tokenizer)
        tokenized = tokenize_pairs(pairs, tok, 64).pairs
        lp = pair_logprobs(loaded.model, tokenized, tok.pad_token_id)
        got.append((lp.ref_chosen.item(), lp.ref_rejected.item()))
    assert got[0] == got[1]
