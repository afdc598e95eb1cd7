"""Hook points checked against the models' own outputs.

resid_post / resid_pre against ``output_hidden_states``; attn_out / mlp_out against
forward hooks placed here, by hand, on the modules that produce them; and the identity
resid_post = resid_pre + attn_out + mlp_out. Tiny random models cover every family
quickly; SmolLM2 and Gemma 3 270M check the same on real weights (slow).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saekit.data.model import (
    HookPoint,
    LoadedModel,
    capture,
    from_hf,
    load_model,
    parse_hook,
    resolve_hook,
    splice,
    unembed,
    valid_hooks,
)

SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")

# Where each family's blocks and sublayer outputs live, written out independently of
# saekit's own table: (blocks, attention-output module, MLP-output module).
REFERENCE_MODULES = {
    "llama": ("model.layers", "self_attn", "mlp"),
    "qwen2": ("model.layers", "self_attn", "mlp"),
    "mistral": ("model.layers", "self_attn", "mlp"),
    "gemma3_text": ("model.layers", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gpt2": ("transformer.h", "attn", "mlp"),
    "gpt_neox": ("gpt_neox.layers", "attention", "mlp"),
}


def tiny_model(model_type: str) -> LoadedModel:
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    configs = {
        "llama": lambda: transformers.LlamaConfig(**common),
        "qwen2": lambda: transformers.Qwen2Config(**common),
        "mistral": lambda: transformers.MistralConfig(**common),
        "gemma3_text": lambda: transformers.Gemma3TextConfig(**common, head_dim=8, sliding_window=8),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=4, n_head=4, n_positions=64),
        "gpt_neox": lambda: transformers.GPTNeoXConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=64,
        ),
    }
    model = transformers.AutoModelForCausalLM.from_config(configs[model_type](), dtype=torch.float32)
    return from_hf(model, name=f"tiny-{model_type}")


def reference(loaded: LoadedModel, input_ids: torch.Tensor, layer: int) -> dict[str, torch.Tensor]:
    """The four activations of ``layer``, read with hand-placed hooks and hidden states."""
    blocks, attn, mlp = REFERENCE_MODULES[loaded.model.config.model_type]
    block = loaded.model.get_submodule(blocks)[layer]
    got = {}
    handles = [
        block.get_submodule(attn).register_forward_hook(
            lambda m, a, out: got.__setitem__("attn_out", out[0] if isinstance(out, tuple) else out)
        ),
        block.get_submodule(mlp).register_forward_hook(
            lambda m, a, out: got.__setitem__("mlp_out", out[0] if isinstance(out, tuple) else out)
        ),
    ]
    try:
        with torch.no_grad():
            hidden = loaded.model(input_ids, output_hidden_states=True).hidden_states
    finally:
        for handle in handles:
            handle.remove()
    return {"resid_pre": hidden[layer], "resid_post": hidden[layer + 1], **got}


def check_family(loaded: LoadedModel, input_ids: torch.Tensor, layer: int, atol: float) -> None:
    hooks = [f"layers.{layer}.{site}" for site in SITES]
    acts = capture(loaded, input_ids, hooks)
    expected = reference(loaded, input_ids, layer)
    for site in SITES:
        got = acts[f"layers.{layer}.{site}"]
        assert got.shape == (*input_ids.shape, loaded.d_model)
        torch.testing.assert_close(got, expected[site], atol=atol, rtol=0, msg=f"{site} differs")
    # resid_post = resid_pre + attn_out + mlp_out, up to the rounding of two additions
    total = sum(acts[f"layers.{layer}.{s}"].float() for s in ("resid_pre", "attn_out", "mlp_out"))
    post = acts[f"layers.{layer}.resid_post"].float()
    eps = torch.finfo(loaded.dtype).eps
    torch.testing.assert_close(total, post, atol=4 * eps * float(post.abs().max()), rtol=0)


def count_calls_after(loaded: LoadedModel, layer: int) -> tuple[list[int], list]:
    """Count forward calls of every block after ``layer`` and of the unembedding."""
    calls = [0]
    blocks = REFERENCE_MODULES[loaded.model.config.model_type][0]
    modules = list(loaded.model.get_submodule(blocks)[layer + 1 :]) + [loaded.model.get_output_embeddings()]
    handles = [m.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1)) for m in modules]
    return calls, handles


# ---- fast: tiny random models ---------------------------------------------------------------


@pytest.mark.parametrize("model_type", sorted(REFERENCE_MODULES))
def test_hook_points_match_the_model_in_every_family(model_type):
    loaded = tiny_model(model_type)
    input_ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    for layer in (0, 2):
        check_family(loaded, input_ids, layer, atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_forward_stops_after_the_deepest_hook(model_type):
    loaded = tiny_model(model_type)
    calls, handles = count_calls_after(loaded, 1)
    try:
        acts = capture(loaded, torch.zeros(1, 5, dtype=torch.long), ["layers.0.mlp_out", "layers.1.resid_post"])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0] and set(acts) == {"layers.0.mlp_out", "layers.1.resid_post"}


def test_final_norm_and_unembed_reproduce_the_logits():
    loaded = tiny_model("llama")
    input_ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        logits = loaded.model(input_ids).logits
        norm, W_U = unembed(loaded)
        last = capture(loaded, input_ids, "layers.3.resid_post")["layers.3.resid_post"]
        torch.testing.assert_close(norm(last) @ W_U.T, logits)
        torch.testing.assert_close(capture(loaded, input_ids, "final_norm")["final_norm"] @ W_U.T, logits)


@pytest.mark.parametrize("site", SITES)
def test_splice_replaces_the_activation(site):
    loaded = tiny_model("gemma3_text")
    input_ids = torch.randint(0, 128, (2, 6))
    hook = f"layers.1.{site}"
    with torch.no_grad():
        clean = loaded.model(input_ids).logits
        with splice(loaded, hook, lambda x: x):
            assert torch.equal(loaded.model(input_ids).logits, clean)
        seen = []
        with splice(loaded, hook, lambda x: seen.append(x) or x * 0):
            zeroed = loaded.model(input_ids).logits
        assert not torch.allclose(zeroed, clean)
        assert torch.equal(seen[0], capture(loaded, input_ids, hook)[hook])
        assert torch.equal(loaded.model(input_ids).logits, clean)  # hook removed afterwards
        # splicing resid_post = resid_pre of the next layer: the same intervention
        if site == "resid_post":
            with splice(loaded, "layers.2.resid_pre", lambda x: x * 0):
                torch.testing.assert_close(loaded.model(input_ids).logits, zeroed)


def test_parse_and_validate_hook_points():
    assert parse_hook("layers.15.resid_post") == HookPoint(15, "resid_post")
    assert parse_hook("blocks.3.hook_mlp_out") == HookPoint(3, "mlp_out")
    assert str(parse_hook("final_norm")) == "final_norm"
    assert parse_hook("layers.2.attn_out").transformer_lens_name == "blocks.2.hook_attn_out"
    for bad in ("layers.x.resid_post", "layer.1.resid_post", "layers.1.resid", "embed"):
        with pytest.raises(ValueError, match=r"layers\.\{L\}\.resid_pre"):
            parse_hook(bad)
    loaded = tiny_model("llama")
    assert len(valid_hooks(loaded)) == 4 * 5 + 1 and "layers.3.mlp_out" in valid_hooks(loaded)
    assert parse_hook("blocks.2.ln2.hook_normalized") == HookPoint(2, "mlp_in")
    assert parse_hook("layers.2.mlp_in").transformer_lens_name == "blocks.2.ln2.hook_normalized"
    with pytest.raises(ValueError, match=r"4 layers.*0\.\.3"):
        resolve_hook(loaded, "layers.4.resid_post")
    with pytest.raises(ValueError, match="0..3"):
        capture(loaded, torch.zeros(1, 3, dtype=torch.long), ["layers.9.attn_out"])


def test_unknown_family_is_a_clear_error():
    class Odd(nn.Module):
        config = type("C", (), {"model_type": "odd", "hidden_size": 4})()

        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="does not know where"):
        from_hf(Odd())


def test_unknown_model_spec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.gguf")


# ---- slow: real weights ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model("smollm2")


@pytest.fixture(scope="module")
def gemma3() -> LoadedModel:
    return load_model("gemma3-270m")


def real_input(loaded: LoadedModel) -> torch.Tensor:
    return torch.randint(10, 20_000, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_smollm2_hook_points(smollm2):
    assert (smollm2.name, smollm2.n_layers, smollm2.d_model) == ("smollm2", 30, 576)
    input_ids = real_input(smollm2)
    for layer in (0, 15):
        check_family(smollm2, input_ids, layer, atol=0.0 if smollm2.dtype == torch.float32 else 1e-6)


@pytest.mark.slow
def test_smollm2_stops_at_layer_15(smollm2):
    calls, handles = count_calls_after(smollm2, 15)
    try:
        capture(smollm2, real_input(smollm2), ["layers.15.resid_post", "layers.3.attn_out"])
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0]


@pytest.mark.slow
def test_smollm2_tokenizer_and_unembed(smollm2):
    tokenizer = smollm2.tokenizer
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2
    input_ids = real_input(smollm2)[:, :8]
    with torch.no_grad():
        logits = smollm2.model(input_ids).logits
        norm, W_U = unembed(smollm2)
        torch.testing.assert_close(capture(smollm2, input_ids, "final_norm")["final_norm"] @ W_U.T, logits)


@pytest.mark.slow
def test_gemma3_hook_points(gemma3):
    assert (gemma3.name, gemma3.n_layers, gemma3.d_model) == ("gemma3-270m", 18, 640)
    input_ids = real_input(gemma3)
    for layer in (0, 5):
        check_family(gemma3, input_ids, layer, atol=1e-6)
    calls, handles = count_calls_after(gemma3, 5)
    try:
        capture(gemma3, input_ids, "layers.5.mlp_out")
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0]
