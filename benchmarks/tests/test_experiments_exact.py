"""benchmarks.harness.exact, .step and .buildcost on a tiny Llama, against float64 autograd."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import SAMPLE, perturb_lora

from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import DPO
from gradproj.core.tokens import collate, tokenize_pairs
from benchmarks.harness import buildcost
from benchmarks.harness import exact
from benchmarks.harness import step
from gradproj.gradients.perpair import lora_layout
from gradproj.store.build import FeatureComputer, StoreSettings


@pytest.fixture
def setup(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    perturb_lora(loaded.model)
    pairs = pairs_from_records([{"id": f"s{i}", "prompt": p, "chosen": c, "rejected": r}
                                for i, (p, c, r) in enumerate(SAMPLE)])
    tok = tokenize_pairs(pairs, loaded.tokenizer, 64).pairs
    return loaded, tok


def _logprob64(model, prompt, response):
    """Σ_j log p(response_j | prompt, response_<j) from one float64 forward (with grad)."""
    seq = torch.tensor([list(prompt) + list(response)])
    logp = model(input_ids=seq).logits[0].double().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(response))


def _grads64(model, pairs, beta):
    """[n, P] float64: ∇ of −log σ(β z) per pair by autograd, one pair at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for p in pairs:
        with torch.no_grad(), model.disable_adapter():
            rc, rr = (_logprob64(model, p.prompt_ids, r) for r in (p.chosen_ids, p.rejected_ids))
        pc, pr = (_logprob64(model, p.prompt_ids, r) for r in (p.chosen_ids, p.rejected_ids))
        loss = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))
        out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def test_exact_influence_matches_a_float64_autograd_loop(setup):
    loaded, tok = setup
    train, val = tok[:4], tok[4:]
    ref_model = copy.deepcopy(loaded.model).double()
    assert [n for n, _ in lora_layout(loaded.model)] == [
        n for n, p in ref_model.named_parameters() if p.requires_grad]
    G64, V64 = _grads64(ref_model, train, 0.1), _grads64(ref_model, val, 0.1)
    want = (G64 @ V64.mean(0)).numpy()

    G = exact.exact_gradients(loaded, train, DPO(0.1), batch_size=3)
    assert G.shape == G64.shape and G.dtype == torch.float32
    assert torch.allclose(G.double(), G64, rtol=1e-4, atol=1e-7)
    got = exact.exact_influences(loaded, train, val, DPO(0.1), batch_size=3)
    assert set(got) == {"exact"}
    assert np.allclose(got["exact"], want, rtol=1e-4, atol=1e-9)
    assert np.abs(want).max() > 0


def test_adam_variants_use_the_saved_moments(setup, tmp_path):
    from gradproj.training.train import OPTIMIZER_FILE, save_optimizer_state

    loaded, tok = setup
    params = step.trainable(loaded.model)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, betas=(0.8, 0.9), eps=1e-6)
    saved = step.snapshot(loaded.model)
    step.objective_step(loaded.model, collate(tok[:3], loaded.tokenizer.pad_token_id),
                        DPO(0.1), opt)
    step.restore(loaded.model, saved)            # moments from one step, gradients at θ
    save_optimizer_state(opt, params, tmp_path / OPTIMIZER_FILE)
    got = exact.exact_influences(loaded, tok[:4], tok[4:], DPO(0.1), 2, adapter_dir=tmp_path)

    G, V = (exact.exact_gradients(loaded, t, DPO(0.1)).double() for t in (tok[:4], tok[4:]))
    m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params.values()]).double()
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params.values()]).double()

    def gamma(X):   # LESS: (β1 m + (1−β1) g) / (√(β2 v + (1−β2) g²) + ε), per entry
        return (0.8 * m + 0.2 * X) / ((0.9 * v + 0.1 * X * X).sqrt() + 1e-6)

    assert np.allclose(got["exact adam·sgd"], (gamma(G) @ V.mean(0)).numpy(), rtol=1e-4)
    assert np.allclose(got["exact adam·adam"], (gamma(G) @ gamma(V).mean(0)).numpy(),
                       rtol=1e-4)
    with pytest.raises(Exception, match="layout covers"):
        exact.precondition(G[:, :5].float(), lora_layout(loaded.model), {}, {"betas": (0.9, 0.9),
                                                                              "eps": 1e-8})


def test_objective_step_is_one_sgd_step_on_the_mean_loss(setup):
    """With SGD(lr=1), θ' − θ = −(1/B) Σ_i g_i, g_i from the per-pair hooks."""
    loaded, tok = setup
    G = exact.exact_gradients(loaded, tok[:4], DPO(0.1))
    before = step.snapshot(loaded.model)
    opt = torch.optim.SGD(list(step.trainable(loaded.model).values()), lr=1.0)
    loss = step.objective_step(loaded.model, collate(tok[:4], 0), DPO(0.1), opt)
    delta = torch.cat([(p.detach() - before[n]).reshape(-1)
                       for n, p in step.trainable(loaded.model).items()])
    assert torch.allclose(delta, -G.mean(0), rtol=1e-4, atol=1e-7)
    assert loss.ndim == 0 and not loaded.model.training
    step.restore(loaded.model, before)
    assert all(torch.equal(p, before[n]) for n, p in step.trainable(loaded.model).items())


def test_perturb_lora_b(setup):
    loaded, _ = setup
    step.perturb_lora_b(loaded.model, std=0.5, seed=3)
    b = torch.cat([p.reshape(-1) for n, p in step.trainable(loaded.model).items()
                   if ".lora_B." in n])
    assert b.std().item() == pytest.approx(0.5, rel=0.2)
    first = b.clone()
    step.perturb_lora_b(loaded.model, std=0.5, seed=3)
    assert torch.equal(first, torch.cat([p.reshape(-1) for n, p in
                                         step.trainable(loaded.model).items()
                                         if ".lora_B." in n]))


def test_build_pass_gives_the_features_of_a_plain_build(setup):
    """The training steps interleaved with the build restore the adapter: same features."""
    loaded, tok = setup
    settings = StoreSettings(proj_dim=32, batch_size=2, proj_batch=4)
    plain = FeatureComputer(loaded, settings, DPO(0.1))
    want, _ = plain.features(tok)
    plain.close()
    got = buildcost.build_pass(loaded, tok, settings, DPO(0.1),
                               buildcost.TrainStep(loaded, DPO(0.1), lr=1e-2))
    assert got["train"] > 0 and got["gradients"] > 0 and len(got["inputs"]) == 2
    fc = FeatureComputer(loaded, settings, DPO(0.1))
    again, _ = fc.features(tok)
    fc.close()
    assert np.array_equal(want, again)
    assert buildcost.projection_seconds(fc.projector, got["inputs"]) > 0


def test_cached_share_and_prebuilt_projector():
    layout = [("a", 10), ("b", 100), ("c", 5)]       # R bytes at k=2, fp32: 80, 800, 40
    assert buildcost.cached_share(layout, 2, 1000 / 2**20) == 1.0
    assert buildcost.cached_share(layout, 2, 500 / 2**20) == pytest.approx(15 / 115)
    proj = buildcost.PrebuiltProjector(k=4, P=10, budget_mb=48 / 2**20)   # S = 3 columns
    x = torch.randn(2, 10)
    R = torch.cat([proj.R] * 4, dim=1)[:, :10]      # the block reused over the columns
    assert proj.S == 3
    assert torch.allclose(proj.project(x), x @ R.T / 2.0, atol=1e-6)


def test_summary_row_ratios_against_the_runs_training_steps():
    # two repeats of a build of 8 pairs: its own training steps take 4 s and 2 s
    runs = [{"wall": 8.0, "train": 4.0, "gradients": 6.0, "projection": 2.0},
            {"wall": 4.0, "train": 2.0, "gradients": 3.0, "projection": 1.0}]
    row = buildcost.summary_row("build", runs, 8, 8, [100.0, 100.0], "n")
    assert row["ratio_per_repeat"] == [0.5, 0.5] and row["ratio_to_train_step"] == 0.5
    assert row["median_seconds"] == 6.0 and row["pairs_per_s"] == pytest.approx(8 / 6)
    assert row["projection_share"] == 0.25 and row["gradient_seconds"] == 4.5
    assert row["projection_seconds"] == 1.5 and row["note"] == "n"
    # LESS: 2 pairs in 10 s and 30 s, against the repeats' 8-pair training steps of 4 s and 2 s
    less = buildcost.summary_row("less", [{"wall": 10.0}, {"wall": 30.0}], 2, 8, [4.0, 2.0])
    assert less["ratio_per_repeat"] == pytest.approx([(2 / 10) / (8 / 4), (2 / 30) / (8 / 2)])
    assert less["ratio_to_train_step"] == pytest.approx((0.1 + 1 / 60) / 2)
    assert less["projection_share"] is None and less["gradient_seconds"] is None


def test_projection_fidelity():
    """An identity 'projection' keeps IF exactly; a 2-dimensional one loses most of it."""
    from gradproj.projection.factory import make_projector

    g = torch.Generator().manual_seed(0)
    G, V = torch.randn(30, 50, generator=g), torch.randn(5, 50, generator=g)

    class Identity:
        def project(self, x):
            return x

    same = exact.projection_fidelity(G, V, Identity(), seed_label=0)
    assert same["spearman"] == pytest.approx(1.0) and same["rel_error"] < 1e-6
    assert same["sign_agreement"] == 1.0 and same["seed"] == 0
    tiny_k = exact.projection_fidelity(G, V, make_projector("rademacher", 2, [("w", 50)]))
    assert tiny_k["rel_error"] > 0.1 and tiny_k["spearman"] < 0.99
