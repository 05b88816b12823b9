"""GiVA and its baselines as adapters on any nn.Module with nn.Linear layers.

The order of operations, as train.py runs them: load the base model (models.load_model); if the method needs
it (needs_gradient), probe the first-step gradient G = dL/dW0 of every target weight on K batches
(estimate_gradients); compute every target's frozen bases (compute_bases: GiVA's seeded SVD of each G,
OSoRA's SVD of W0); wrap each target nn.Linear in its method's adapter with those bases and freeze everything
else (apply_adapters); train only the adapter tensors (adapter_parameters, check_optimizer, parameter_table);
then save the bases once and the vectors per checkpoint (save_adapter, load_adapter), or fold every dW into
its weight for evaluation (merge_adapters). The maths of every method is in ../shared/docs/methods.md; each
method is one class in one short file here, listed in giva/methods.py.
"""
from giva.adapter_file import load_adapter, save_adapter
from giva.config import AdapterConfig
from giva.inject import (adapted_layers, adapter_parameters, apply_adapters, check_optimizer, compute_bases,
                         count_parameters, find_targets, merge_adapters, needs_gradient, parameter_table,
                         unmerge_adapters)
from giva.probe import estimate_gradients

__all__ = ["AdapterConfig", "adapted_layers", "adapter_parameters", "apply_adapters", "check_optimizer",
           "compute_bases", "count_parameters", "estimate_gradients", "find_targets", "load_adapter",
           "merge_adapters", "needs_gradient", "parameter_table", "save_adapter", "unmerge_adapters"]
