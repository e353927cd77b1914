"""The answer-token loss of `mcnc finetune`: the output layer runs on answer positions only and
gives the values (and gradients) that full logits give."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import mcnc
from mcnc.apps.lm_eval import answer_logits, next_token_logits, token_loss_sum

VOCAB = 80


def adapted_llama() -> mcnc.AdapterModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = mcnc.AdapterModel(LlamaForCausalLM(config))
    model.add_adapter("default", mcnc.MCNCAdapterConfig(rank=4, d=400, seed=1))
    with torch.no_grad():  # move B off zero so that every adapter number gets a gradient
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


def instruction_batch() -> dict[str, torch.Tensor]:
    """Three rows of 10 tokens, the last padded; answers at different places in each row."""
    ids = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(4))
    labels = torch.full_like(ids, -100)
    labels[0, 6:] = ids[0, 6:]
    labels[1, 2:5] = ids[1, 2:5]
    labels[2, 4:7] = ids[2, 4:7]
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def test_answer_logits_equal_the_selected_full_logits():
    model, batch = adapted_llama(), instruction_batch()
    full, labels = next_token_logits(model, batch)
    answer = labels != -100
    logits, targets = answer_logits(model, batch)
    assert logits.shape == (int(answer.sum()), VOCAB) == (10, VOCAB)
    torch.testing.assert_close(logits, full[answer], atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, labels[answer])


def test_the_output_layer_sees_only_answer_positions_and_the_hook_is_removed():
    model, batch = adapted_llama(), instruction_batch()
    head = model.get_output_embeddings()
    rows = []
    seen = head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape))
    answer_logits(model, batch)
    seen.remove()
    assert rows == [torch.Size([10, 32])]  # 10 answer positions of 30, hidden size 32
    assert not head._forward_pre_hooks and not head._forward_hooks
    assert model(input_ids=batch["input_ids"]).logits.shape == (3, 10, VOCAB)


def test_loss_and_gradients_match_the_full_logits_loss():
    model, batch = adapted_llama(), instruction_batch()
    loss, count = token_loss_sum(model, batch)
    loss.backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    full, labels = next_token_logits(model, batch)
    reference = nn.functional.cross_entropy(full.reshape(-1, VOCAB), labels.reshape(-1),
                                            ignore_index=-100, reduction="sum")
    reference.backward()
    assert count == 10
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert fast and all(g.abs().sum() > 0 for g in fast.values())
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(fast[name], p.grad, atol=1e-6, rtol=1e-5)


class LogitsWithoutOutputLayer(nn.Module):
    """Logits from a matrix product with the embedding, no output-layer module."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.embed(input_ids) @ self.embed.weight.T)


def test_a_model_without_an_output_layer_is_selected_from_full_logits():
    model, batch = LogitsWithoutOutputLayer(), instruction_batch()
    full, labels = next_token_logits(model, batch)
    logits, targets = answer_logits(model, batch)
    torch.testing.assert_close(logits, full[labels != -100])
    assert torch.equal(targets, labels[labels != -100])


def test_no_answer_tokens_give_a_zero_loss_over_zero_tokens():
    model, batch = adapted_llama(), instruction_batch()
    batch["labels"].fill_(-100)
    loss, count = token_loss_sum(model, batch)
    assert (loss.item(), count) == (0.0, 0)
