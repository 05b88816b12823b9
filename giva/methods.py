"""The methods by their AdapterConfig.method names: the one place that lists them.

Each is one class in one file that owns everything about itself (giva/adapted_linear.py lists what).
"""
from giva.full import FullFineTuning
from giva.giva_linear import GivaLinear
from giva.lora import LoraLinear
from giva.osora import OsoraLinear
from giva.randlora import RandLoraLinear
from giva.vera import VeraLinear

METHODS = {cls.method: cls for cls in (GivaLinear, VeraLinear, OsoraLinear, RandLoraLinear, LoraLinear,
                                       FullFineTuning)}
