"""transformers.Trainer with mcnc adapters on tiny LLaMA and GPT-2 models: training with
evaluation steps, checkpoints that hold the adapters only, resuming, saving and reloading."""

import json

import pytest
import torch
from test_hf_models import CONFIGS, VOCAB, tiny_gpt2, tiny_tied_llama
from transformers import Trainer, TrainingArguments

import mcnc
from mcnc.adapters.trainer import AdapterCallback, AdapterTrainer

MODELS = {"llama": tiny_tied_llama, "gpt2": tiny_gpt2}


def examples(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (8,), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long),
                    "labels": ids.clone()})
    return out


def arguments(out, steps=4, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, learning_rate=0.5, eval_strategy="steps",
                             eval_steps=2, save_steps=2, logging_steps=1, report_to=[],
                             use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, **kwargs)


def trainer(model_name, method, out, steps=4):
    model = mcnc.get_adapter_model(MODELS[model_name](), CONFIGS[method])
    return AdapterTrainer(model=model, args=arguments(out, steps), train_dataset=examples(16, 1),
                          eval_dataset=examples(8, 2))


def adapter_values(t) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.adapters["default"].stored_tensors().items()}


@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_train_evaluate_checkpoint_resume_save_reload(model_name, method, tmp_path):
    full = trainer(model_name, method, tmp_path / "full")
    full.train()
    evals = [e for e in full.state.log_history if "eval_loss" in e]
    assert len(evals) == 2 and all(e["eval_loss"] > 0 for e in evals)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "adapter_config.json").exists()
    assert not (checkpoint / "model.safetensors").exists()  # the adapter only
    assert json.loads((checkpoint / "training_args.json").read_text())["max_steps"] == 4
    if method == "mcnc":
        alpha = full.model.adapters["default"].alpha
        assert alpha.abs().max() <= full.model.adapters["default"].config.L  # folded

    resumed = trainer(model_name, method, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for name, value in adapter_values(full).items():
        torch.testing.assert_close(adapter_values(resumed)[name], value, atol=1e-6, rtol=1e-5)

    full.save_model(str(tmp_path / "final"))
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "training_args.json"]
    reloaded = mcnc.AdapterModel.from_pretrained(MODELS[model_name](), tmp_path / "final")
    ids = examples(2, 3)[0]["input_ids"][None]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits,
                                   full.model.eval()(input_ids=ids).logits)


def test_plain_trainer_keeps_the_inputs_and_the_callback_folds(tmp_path):
    model = mcnc.get_adapter_model(tiny_tied_llama(), mcnc.MCNCAdapterConfig(rank=4, d=300,
                                                                             L=0.5))
    plain = Trainer(model=model, args=arguments(tmp_path, save_strategy="no"),
                    train_dataset=examples(16, 1), eval_dataset=examples(8, 2),
                    callbacks=[AdapterCallback()])
    plain.train()  # no "batch received was empty": input_ids, attention_mask, labels kept
    assert model.adapters["default"].alpha.abs().max() <= 0.5


def test_adapter_trainer_wants_an_adapter_model(tmp_path):
    with pytest.raises(TypeError, match="get_adapter_model"):
        AdapterTrainer(model=tiny_gpt2(), args=arguments(tmp_path), eval_dataset=examples(4, 2))


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_plain_trainer_saves_and_resumes_the_adapters_only(model_name, tmp_path):
    """A plain Trainer saves an AdapterModel's state dict, which holds the adapters only: a
    few kilobytes, no crash on GPT-2's tied weights; it resumes from its checkpoints, and what
    it saved reloads on a fresh base like an adapter folder (the config is in the file)."""
    import safetensors.torch

    def plain(out):
        model = mcnc.get_adapter_model(MODELS[model_name](), CONFIGS["mcnc"])
        return Trainer(model=model, args=arguments(out), train_dataset=examples(16, 1),
                       eval_dataset=examples(8, 2), callbacks=[AdapterCallback()])

    full = plain(tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2" / "model.safetensors"
    saved = safetensors.torch.load_file(checkpoint)
    assert set(saved) == {"adapters.default.manifold.alpha", "adapters.default.manifold.beta",
                          "adapters.default.adapter_config"}
    assert checkpoint.stat().st_size < 4 * sum(t.numel() for t in saved.values()) + 1000
    resumed = plain(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint.parent))
    for name, value in adapter_values(full).items():
        torch.testing.assert_close(adapter_values(resumed)[name], value, atol=1e-6, rtol=1e-5)
    full.save_model(str(tmp_path / "final"))
    fresh = mcnc.get_adapter_model(MODELS[model_name](), CONFIGS["mcnc"])
    fresh.load_state_dict(safetensors.torch.load_file(tmp_path / "final" / "model.safetensors"))
    ids = examples(2, 3)[0]["input_ids"][None]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(input_ids=ids).logits,
                                   full.model.eval()(input_ids=ids).logits)
    with pytest.raises(RuntimeError, match="holds its adapters only"):
        fresh.load_state_dict(MODELS[model_name]().state_dict())
    reloaded = mcnc.AdapterModel.from_pretrained(MODELS[model_name](), tmp_path / "final")
    assert isinstance(reloaded.adapters["default"].config, mcnc.MCNCAdapterConfig)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(input_ids=ids).logits,
                           fresh.eval()(input_ids=ids).logits)
    other = mcnc.get_adapter_model(MODELS[model_name](), CONFIGS["lora"])
    with pytest.raises(ValueError, match="has another config"):
        other.load_state_dict(saved, strict=False)
    with pytest.raises(mcnc.FormatError, match="no config of an adapter named 'second'"):
        mcnc.AdapterModel.from_pretrained(MODELS[model_name](), tmp_path / "final",
                                          adapter_name="second")
