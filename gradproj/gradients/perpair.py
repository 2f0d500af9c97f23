"""Per-pair gradients of a preference objective wrt the LoRA parameters, one backward per batch.

A batch of B pairs is a PairBatch of R = 2B rows (chosen rows [0, B), rejected rows [B, 2B)).
For pair i, with π the adapter-on log-probs, r the adapter-off (reference) ones and |y| the
response lengths, any objective of gradproj.core.objectives gives

    ℓ_i = objective(π(c_i), π(r_i), r(c_i), r(r_i), |c_i|, |r_i|),
    g_i = ∇_θ ℓ_i    (θ = the trainable LoRA weights only).

ℓ_i depends on rows i and B+i only, so one backward of Σ_i ℓ_i gives every row's own output
gradient. Each LoRA factor (peft's ``lora_A[adapter]`` / ``lora_B[adapter]``) is an nn.Linear
y = W a with W [d_out, d_in]; with a [R, T, d_in] its input and δ = ∂Σℓ/∂y [R, T, d_out],

    G_row = Σ_t δ[row, t]ᵀ a[row, t]      (einsum "rto,rti->roi", fp32, [R, d_out, d_in])
    g_i   = vec(G_row[i] + G_row[B + i])   (row-major, the parameter's own layout)

This is exact (no approximation): peft's α/r scale sits outside lora_B, so it is already in δ.
δ is zeroed where attention_mask == 0 before the einsum (equivalent to zeroing a there); prompt
positions are kept — the response log-probs depend on them through attention. δ and a are cast
to fp32 before the einsum, so a bfloat16 (or 4-bit) base still gives fp32 per-pair gradients.

How a is kept: a forward hook on each factor replaces its output y by ``_Tap(y, a)``, an
identity whose backward receives δ and holds a through ``save_for_backward``. a is therefore an
ordinary saved activation: under activation checkpointing (``checkpointing=True``, see
gradproj.core.model.checkpointed) it is dropped after the forward and recomputed, with the rest
of its decoder layer, when the backward pass reaches that layer — the recomputation runs the
same hook, and autograd pairs each recomputed a with its own _Tap node. Nothing depends on the
attention kernel (eager or sdpa): the hooks sit on the LoRA linears only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from gradproj.core.logprobs import PairLogProbs, adapter_disabled, sequence_logprobs
from gradproj.core.model import checkpointed
from gradproj.core.objectives import Objective
from gradproj.core.errors import GradprojError
from gradproj.core.tokens import PairBatch


@dataclass
class PairGradients:
    """Per-pair LoRA gradients of one batch; every tensor is on the model's device."""

    ids: list[str]
    grads: dict[str, torch.Tensor]
    """parameter name → [B, numel] fp32, in :func:`lora_layout` order (zeros where not finite)."""
    finite: torch.Tensor
    """[B] bool: False when the pair's loss or any entry of its gradient was NaN/inf."""
    logprobs: PairLogProbs
    """policy (at θ, detached) and reference response log-probs, each [B] fp32."""
    losses: torch.Tensor
    """[B] per-pair loss ℓ_i (detached)."""

    def __len__(self) -> int:
        return len(self.ids)

    def flat(self) -> torch.Tensor:
        """[B, P] with P = Σ numel: the gradients concatenated in layout order."""
        return torch.cat(list(self.grads.values()), dim=1)


def _unwrap(model) -> nn.Module:
    """Accept a LoadedModel as well as the peft model itself."""
    from gradproj.core.model import LoadedModel

    return model.model if isinstance(model, LoadedModel) else model


def lora_layout(model) -> list[tuple[str, int]]:
    """(name, numel) of the trainable parameters, in ``named_parameters`` order."""
    return [(n, p.numel()) for n, p in _unwrap(model).named_parameters() if p.requires_grad]


def _lora_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """parameter name → the LoRA nn.Linear owning it, for every trainable parameter.

    Raises GradprojError when a trainable parameter is not the weight of a plain LoRA factor
    (DoRA magnitudes, trainable biases, embedding adapters, modules_to_save ...).
    """
    modules = dict(model.named_modules())
    out: dict[str, nn.Linear] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if (leaf != "weight" or not isinstance(module, nn.Linear)
                or not (".lora_A." in name or ".lora_B." in name)):
            raise GradprojError(f"trainable parameter {name} is not the weight of a LoRA "
                                "linear factor; per-pair gradients support plain LoRA only")
        out[name] = module
    if not out:
        raise GradprojError("the model has no trainable LoRA parameters")
    return out


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _reference(model, batch: PairBatch, ref_logprobs, device,
               needed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [B], rejected [B]) reference log-probs: given ones checked, else adapter off;
    zeros without a pass when the objective is reference-free (``needed`` False)."""
    b = len(batch)
    if not needed:
        return torch.zeros(b, device=device), torch.zeros(b, device=device)
    if ref_logprobs is None:
        with torch.no_grad(), adapter_disabled(model):
            ref = sequence_logprobs(model, batch)
        return ref[:b], ref[b:]
    if len(ref_logprobs) != 2:
        raise GradprojError("ref_logprobs must be a (chosen, rejected) pair of tensors")
    out = tuple(torch.as_tensor(x).to(device=device, dtype=torch.float32).reshape(-1)
                for x in ref_logprobs)
    if any(len(x) != b for x in out):
        raise GradprojError(f"ref_logprobs have {len(out[0])} and {len(out[1])} entries "
                            f"for a batch of {b} pairs")
    return out[0], out[1]


@dataclass
class _Capture:
    """State of one batch's forward/backward: padding mask, per-row sums, autograd roots."""

    mask: torch.Tensor                      # [R, T] bool, True on real tokens
    rows: dict[str, torch.Tensor] = field(default_factory=dict)   # name → [R, d_out, d_in]
    roots: list[torch.Tensor] = field(default_factory=list)
    backward: bool = False
    """True once the backward pass started: forwards seen then are checkpoint recomputations."""


class _Tap(torch.autograd.Function):
    """y ↦ y; backward adds Σ_t δ[row, t]ᵀ a[row, t] (fp32, padding masked) to the capture.

    ``a`` is saved with save_for_backward, so activation checkpointing frees and recomputes
    it like any other activation of its layer."""

    @staticmethod
    def forward(ctx, out, a, cap: _Capture, name: str):
        ctx.save_for_backward(a)
        ctx.cap, ctx.name = cap, name
        return out.view_as(out)

    @staticmethod
    def backward(ctx, delta):
        (a,) = ctx.saved_tensors
        cap, name = ctx.cap, ctx.name
        d = delta.float().masked_fill(~cap.mask[..., None], 0.0)
        g = torch.einsum("rto,rti->roi", d, a.float())
        cap.rows[name] = g if name not in cap.rows else cap.rows[name] + g
        return delta, None, None, None


class PerPairGradients:
    """Hooks installed once on every LoRA factor; call once per batch.

    ``grads = PerPairGradients(model, loss)(batch)`` runs one forward with the adapter on (plus
    one no-grad forward with it off when ``ref_logprobs`` is not given) and one backward, and
    leaves every parameter's ``.grad`` untouched. Use ``close()`` (or ``with``) to remove the
    hooks. ``checkpointing=True`` runs the forward with activation checkpointing of every
    decoder layer (default: the LoadedModel's ``grad_checkpointing`` setting, else off); the
    gradients are the same.
    """

    def __init__(self, model, loss_fn: Objective, checkpointing: bool | None = None):
        from gradproj.core.model import LoadedModel

        if checkpointing is None:
            checkpointing = (isinstance(model, LoadedModel)
                             and model.settings.grad_checkpointing)
        self.checkpointing = bool(checkpointing)
        self.model = _unwrap(model)
        self.loss_fn = loss_fn
        self._linears = _lora_linears(self.model)
        self.layout = [(n, m.weight.numel()) for n, m in self._linears.items()]
        # Backward is asked only for lora_A outputs (small, [R, T, r]): every lora_B output lies
        # on the path to its own lora_A output, so its _Tap's backward runs on the way.
        names = set(self._linears)
        self._capture: _Capture | None = None
        self._handles = []
        for name, module in self._linears.items():
            root = ".lora_A." in name or name.replace(".lora_B.", ".lora_A.") not in names
            self._handles.append(module.register_forward_hook(self._forward_hook(name, root)))

    def _forward_hook(self, name: str, root: bool):
        def hook(module, inputs, output):
            cap = self._capture
            if cap is None or not output.requires_grad:
                return None
            a = inputs[0]
            if a.dim() != 3 or a.shape[:2] != cap.mask.shape:
                raise GradprojError(f"{name}: input of shape {tuple(a.shape)}, expected "
                                    f"[rows, tokens, features] = {tuple(cap.mask.shape)} + [d]")
            if root and not cap.backward:
                cap.roots.append(output)
            return _Tap.apply(output, a, cap, name)
        return hook

    def __call__(self, batch: PairBatch, ref_logprobs: tuple[torch.Tensor, torch.Tensor] | None
                 = None) -> PairGradients:
        """Per-pair gradients of ``batch``; ``ref_logprobs`` = (chosen [B], rejected [B])."""
        if self._handles is None:
            raise GradprojError("PerPairGradients is closed")
        b = len(batch)
        if b == 0:
            raise GradprojError("empty batch")
        device = _model_device(self.model)
        batch = batch.to(device)
        ref_c, ref_r = _reference(self.model, batch, ref_logprobs, device,
                                  self.loss_fn.needs_reference)

        cap = _Capture(mask=batch.attention_mask.bool())
        self._capture = cap   # kept through the backward: checkpointing recomputes forwards
        try:
            with torch.enable_grad(), checkpointed(self.model, self.checkpointing):
                policy = sequence_logprobs(self.model, batch)
            if not cap.roots:
                raise GradprojError("no LoRA layer ran with gradients (adapter disabled?)")
            lp = PairLogProbs.from_rows(policy, (ref_c, ref_r), batch.response_lengths())
            losses = self.loss_fn(lp)
            cap.backward = True
            # autograd.grad wrt the lora_A outputs: runs every _Tap's backward, never writes a
            # .grad field.
            torch.autograd.grad(losses.sum(), cap.roots, allow_unused=True)
        finally:
            self._capture = None
            cap.roots.clear()

        grads: dict[str, torch.Tensor] = {}
        finite = torch.isfinite(losses.detach())
        for name, numel in self.layout:
            rows = cap.rows.pop(name, None)
            if rows is None:   # the factor did not run: its gradient is zero
                g = torch.zeros(b, numel, device=device)
            else:
                g = (rows[:b] + rows[b:]).reshape(b, numel)
            finite &= torch.isfinite(g).all(dim=1)
            grads[name] = g
        for name in grads:
            grads[name] = torch.where(finite[:, None], grads[name], 0.0)
        return PairGradients(list(batch.ids), grads, finite, lp.detach(), losses.detach())

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self._handles or ():
            h.remove()
        self._handles = None

    def __enter__(self) -> PerPairGradients:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def adam_precondition(grads: dict[str, torch.Tensor], state: dict[str, dict[str, torch.Tensor]],
                      meta: dict) -> dict[str, torch.Tensor]:
    """LESS-style Adam update direction of every per-pair gradient, by parameter name.

    With (m, v) the AdamW moments of :func:`gradproj.train.load_optimizer_state` and
    (β1, β2, ε) = meta["betas"], meta["eps"], per pair and elementwise (no bias correction):

        m' = β1 m + (1 − β1) g,   v' = β2 v + (1 − β2) g²,   g' = m' / (√v' + ε)

    ``grads``: name → [B, numel]; returns the same shapes in fp32. A zeroed (non-finite) pair
    becomes β1 m / (√(β2 v) + ε), not zero: keep using its ``finite`` flag.
    """
    b1, b2 = (float(x) for x in meta["betas"])
    eps = float(meta["eps"])
    out: dict[str, torch.Tensor] = {}
    for name, g in grads.items():
        moments = state.get(name)
        if moments is None or "exp_avg" not in moments or "exp_avg_sq" not in moments:
            raise GradprojError(f"optimizer state has no Adam moments for parameter {name}")
        g = g.float()
        m = moments["exp_avg"].to(g.device, torch.float32).reshape(1, -1)
        v = moments["exp_avg_sq"].to(g.device, torch.float32).reshape(1, -1)
        if m.shape[1] != g.shape[1] or v.shape[1] != g.shape[1]:
            raise GradprojError(f"optimizer state of {name} has {m.shape[1]} values, "
                                f"the gradient {g.shape[1]}")
        m2 = b1 * m + (1 - b1) * g
        v2 = b2 * v + (1 - b2) * g * g
        out[name] = m2 / (v2.sqrt() + eps)
    return out


def _single_pairs(batch: PairBatch) -> Iterator[PairBatch]:
    """Each pair of ``batch`` as a batch of one, trimmed to its own longest row (no extra pad)."""
    b = len(batch)
    for i in range(b):
        rows = torch.tensor([i, b + i], device=batch.input_ids.device)
        width = int(batch.attention_mask[rows].sum(dim=1).max())
        yield PairBatch([batch.ids[i]], batch.input_ids[rows, :width],
                        batch.attention_mask[rows, :width], batch.response_mask[rows, :width])


def per_pair_gradients_loop(model, loss_fn: Objective, batch: PairBatch,
                            ref_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None
                            ) -> dict[str, torch.Tensor]:
    """Slow reference: one forward and one ``autograd.grad`` per pair, on a batch of one.

    Returns name → [B, numel] fp32 like :class:`PerPairGradients` (non-finite values kept as
    they are). For tests and benchmarks only: B backward passes instead of one.
    """
    model = _unwrap(model)
    _lora_linears(model)   # same parameter check as the hooked version
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    device = _model_device(model)
    batch = batch.to(device)
    ref_c, ref_r = _reference(model, batch, ref_logprobs, device, loss_fn.needs_reference)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for i, one in enumerate(_single_pairs(batch)):
        with torch.enable_grad():
            pol = sequence_logprobs(model, one)
            loss = loss_fn(PairLogProbs.from_rows(pol, (ref_c[i:i + 1], ref_r[i:i + 1]),
                                                  one.response_lengths()))
            gs = torch.autograd.grad(loss.sum(), list(params.values()), allow_unused=True)
        for (n, p), g in zip(params.items(), gs):
            out[n].append(torch.zeros(p.numel(), device=device) if g is None
                          else g.detach().float().reshape(-1))
    return {n: torch.stack(v) for n, v in out.items()}
