"""``transformers.Trainer`` for :class:`~mcnc.adapters.model.AdapterModel`.

    trainer = mcnc.adapters.trainer.AdapterTrainer(model=adapter_model, args=args,
                                                   train_dataset=..., eval_dataset=...)
    trainer.train()                    # alphas folded after every step, evaluation as usual
    trainer.train(resume_from_checkpoint=True)
    trainer.save_model("out")          # the adapter folders only (kilobytes), not the base

Checkpoints hold the adapter folders (``adapter_config.json`` + ``adapter_model.safetensors``,
see :mod:`mcnc.adapters.files`) plus Trainer's own optimiser, scheduler and random states; the
training arguments are written as JSON. A plain ``Trainer`` works too: it saves the
AdapterModel's state dict, which holds the adapters and their configs only
(``model.safetensors``, kilobytes; ``AdapterModel.from_pretrained(base, folder)`` reloads it),
and resumes from it; pass
``callbacks=[AdapterCallback()]`` to keep MCNC's alphas in their cube. AdapterTrainer also
builds its optimiser from ``AdapterModel.param_groups`` (MCNC's beta at its own rate); a plain
Trainer trains every number at one rate unless given ``optimizers=``.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn
from transformers import Trainer, TrainerCallback

from mcnc.adapters.model import AdapterModel


def _adapter_model(model: nn.Module | None) -> AdapterModel | None:
    """The AdapterModel inside ``model`` (unwrapping DDP-style ``.module`` wrappers)."""
    while model is not None and not isinstance(model, AdapterModel):
        model = getattr(model, "module", None)
    return model


class AdapterCallback(TrainerCallback):
    """Calls :meth:`AdapterModel.after_step` after every optimiser step (MCNC: folds the alphas
    back into their cube; NOLA and LoRA: nothing)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        adapter_model = _adapter_model(model)
        if adapter_model is not None:
            adapter_model.after_step()


class AdapterTrainer(Trainer):
    """A ``Trainer`` whose checkpoints and ``save_model`` hold the adapters only, which resumes
    from such checkpoints, and which runs :class:`AdapterCallback`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if _adapter_model(self.model) is None:
            raise TypeError(f"AdapterTrainer trains an mcnc AdapterModel, got "
                            f"{type(self.model).__name__}; wrap the model with "
                            "mcnc.get_adapter_model first")
        self.add_callback(AdapterCallback())

    def create_optimizer(self, model: nn.Module | None = None):
        """Trainer's optimiser (its class and settings from the training arguments) over the
        adapter's own groups: MCNC's beta at its own rate (``AdapterModel.param_groups``)."""
        if self.optimizer is None:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = _adapter_model(self.model).param_groups(self.args.learning_rate)
            self.optimizer = cls([{**g, "weight_decay": self.args.weight_decay} for g in groups],
                                 **kwargs)
        return self.optimizer

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        _adapter_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None
                              ) -> None:
        _adapter_model(model or self.model).load_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
