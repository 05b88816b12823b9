"""Full fine-tuning as a method like the others: nothing is wrapped and every parameter of the model trains.

It answers the same class-level questions as an AdaptedLinear (giva/adapted_linear.py), so injection, the
adapter file and train.py treat it like any method: no probe gradient, no bases, and `attach` returns every
parameter as trainable (a module in adapter.modules_to_save is then already among them and is not added twice).
`adapter.targets` is ignored. The adapter file of a full run holds every parameter.
"""
from torch import nn


class FullFineTuning:
    method = "full"
    needs_gradient = False
    wraps_targets = False
    peft_type = None  # a full run's result is the merged model (export.py without --peft)

    @classmethod
    def check_config(cls, cfg):
        pass

    @classmethod
    def layer_bases(cls, linear, cfg, name, grad) -> dict:
        return {}

    @classmethod
    def attach(cls, model: nn.Module, cfg, targets: dict, bases: dict) -> dict[str, nn.Parameter]:
        return dict(model.named_parameters())
