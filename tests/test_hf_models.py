"""Adapters and compression on the model families users bring: GPT-2 (transformers' Conv1D
layers) and tied output heads, on tiny models built from configs."""

import warnings

import pytest
import torch
from toymodels import fit
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import mcnc

VOCAB = 64
CONFIGS = {
    "mcnc": mcnc.MCNCAdapterConfig(rank=4, d=300, seed=1),
    "nola": mcnc.NOLAAdapterConfig(rank=4, coefficients=120, seed=2),
    "lora": mcnc.LoRAAdapterConfig(rank=2, seed=3),
}


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    return GPT2LMHeadModel(config).eval()


def tiny_tied_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def ids(batch=3, length=7, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def trained(model, config, **kwargs):
    adapted = mcnc.get_adapter_model(model, config, **kwargs)
    adapted.train()
    x = ids(4, 8, seed=5)
    fit(adapted, lambda: adapted(input_ids=x, labels=x).loss, 3, lr=0.05)
    return adapted.eval()


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_gpt2_conv1d_layers_are_adapted_and_merge_exactly(method):
    model = trained(tiny_gpt2(), CONFIGS[method])
    targets = {t.name for t in model.adapters["default"].layout.targets}
    assert targets == {f"transformer.h.{i}.{n}" for i in range(2)
                       for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    x = ids()
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
        tokens = model.generate(input_ids=x[:1, :3], max_new_tokens=5, do_sample=False)
        with model.disable_adapter():
            base = model(input_ids=x).logits
    assert (unmerged - base).abs().max() > 1e-4  # the adapter does something
    merged = model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, unmerged, atol=1e-5, rtol=1e-5)
        again = merged.generate(input_ids=x[:1, :3], max_new_tokens=5, do_sample=False)
    assert torch.equal(tokens, again)


def test_merging_into_a_tied_head_is_refused_unless_untied():
    model = trained(tiny_tied_llama(), mcnc.LoRAAdapterConfig(rank=2, target_modules=["lm_head"]))
    head, embed = model.base_model.lm_head, model.base_model.model.embed_tokens
    assert head.base_layer.weight is embed.weight
    before = embed.weight.clone()
    x = ids()
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
    with pytest.raises(ValueError, match=r"tied to model\.embed_tokens\.weight.*untie=True"):
        model.merge_adapter()
    assert torch.equal(embed.weight, before) and not model.state.merged  # nothing changed
    with pytest.warns(UserWarning, match="untied lm_head.weight"):
        merged = model.merge_and_unload(untie=True)
    assert torch.equal(merged.model.embed_tokens.weight, before)
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight
    assert merged.config.tie_word_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_gpt2_compresses_with_conv1d_weights_generated():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left uncovered: no warning
        model = mcnc.compress(tiny_gpt2(), mcnc.MCNCConfig(k=8, d=500, width=16))
    names = {t.name for t in model.layout.targets}
    assert "transformer.h.0.attn.c_attn.weight" in names
    assert "transformer.wte.weight" in names  # embeddings too
    dense = sum(v.numel() for v in model.dense_leftovers().values()
                if v.is_floating_point() and v.dim() >= 2)
    assert dense == 0


def test_uncovered_weight_matrices_are_named_in_a_warning():
    from transformers.pytorch_utils import Conv1D

    with pytest.warns(UserWarning, match=r"Conv1D.*transformer\.h\.0\.attn\.c_attn.*target_types"):
        mcnc.compress(tiny_gpt2(), mcnc.MCNCConfig(k=8, d=500, width=16,
                                                   target_types=(torch.nn.Embedding,)))
    assert Conv1D in mcnc.core.config.default_target_types()


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("make", [tiny_gpt2, tiny_tied_llama])
def test_export_as_a_peft_lora_gives_the_same_logits(method, make, tmp_path):
    peft = pytest.importorskip("peft")
    from mcnc.adapters.peft_export import export_peft_lora

    model = trained(make(), CONFIGS[method])
    x = ids()
    with torch.no_grad():
        ours = model(input_ids=x).logits
    export_peft_lora(model, tmp_path / "lora")
    loaded = peft.PeftModel.from_pretrained(make(), tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, ours, atol=1e-5, rtol=1e-5)


def test_adapters_name_the_weight_matrices_they_cannot_reach():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5))
    with pytest.warns(UserWarning, match=r"stay frozen \(Conv2d: 0\).*mode='delta'"):
        mcnc.get_adapter_model(model, mcnc.LoRAAdapterConfig(rank=2, target_modules=["2"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LLaMA: every weight matrix is linear or an embedding
        mcnc.get_adapter_model(tiny_tied_llama(), mcnc.LoRAAdapterConfig(rank=2))
