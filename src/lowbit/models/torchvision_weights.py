"""torchvision's ImageNet weights for lowbit's MobileNetV3: ``init=torchvision:mobilenet_v3_small``.

lowbit's ``MobileNetV3`` is built from the paper's tables with torchvision's choices where the
tables are silent (``lowbit.models.mobilenetv3``), so its state dict holds the same tensors in
the same order as torchvision's ``mobilenet_v3_small``/``_large``: stem, bottlenecks (expand,
depthwise, squeeze-excite, project), last conv, classifier. The mapping pairs the two state
dicts entry by entry and checks every shape; ``tests/test_pretrained.py`` proves it by giving
both models the same (random) weights and comparing their logits.

The weights file is the one torchvision's weights API downloads (``MobileNet_V3_Small_Weights.
IMAGENET1K_V1``) into torch's hub cache, ``$TORCH_HOME/hub/checkpoints/``. lowbit reads it from
there with ``torch.load(weights_only=True)`` and never downloads it itself: a machine without
network gets one line saying where to put the file.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

from lowbit.errors import ConfigError

# torchvision's builder name -> (its weights enum, lowbit's MobileNetV3 arch)
TORCHVISION_MODELS = {
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "small"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "large"),
}
WEIGHTS_TAG = "IMAGENET1K_V1"


def check_name(name: str) -> None:
    if name not in TORCHVISION_MODELS:
        raise ConfigError(
            f"init=torchvision:{name}: unknown model; lowbit maps "
            f"{', '.join('torchvision:' + n for n in TORCHVISION_MODELS)}"
        )


def weights_entry(name: str):
    """torchvision's weights enum entry for ``name`` (``IMAGENET1K_V1``)."""
    import torchvision.models as models

    check_name(name)
    enum = getattr(models, TORCHVISION_MODELS[name][0])
    return enum[WEIGHTS_TAG]


def cached_file(name: str) -> Path:
    """Where torchvision's weights API keeps ``name``'s file: torch's hub cache."""
    url = weights_entry(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def check_cached(name: str) -> Path:
    """The cached weights file, or ConfigError saying where to put it (no download here)."""
    path = cached_file(name)
    if not path.is_file():
        url = weights_entry(name).url
        raise ConfigError(
            f"init=torchvision:{name}: torchvision's ImageNet weights are not in torch's cache "
            f"and lowbit does not download them: fetch {url} and put the file at {path} "
            f"(or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)"
        )
    return path


def torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """torchvision's state dict for ``name``, from the cache, read with weights_only=True."""
    path = check_cached(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"init=torchvision:{name}: {path} is not a readable weights file "
            f"({type(error).__name__}); delete it and fetch it again"
        ) from None
    if not isinstance(state, dict):
        raise ConfigError(f"init=torchvision:{name}: {path} holds no state dict")
    return state


def map_state(
    torchvision: dict[str, torch.Tensor], lowbit: dict[str, torch.Tensor], name: str
) -> dict[str, torch.Tensor]:
    """torchvision's tensors under lowbit's names, paired in state-dict order.

    The classifier's last Linear may differ in its number of classes (ImageNet's 1000 against a
    data set's 10): it is left out, and the caller keeps lowbit's own init for it. Any other
    difference (another architecture, another width) is a ConfigError naming the first entry.
    """
    source, target = list(torchvision.items()), list(lowbit.items())
    if len(source) != len(target):
        raise ConfigError(
            f"init=torchvision:{name}: its {len(source)} tensors do not pair with this model's "
            f"{len(target)} (first: {target[0][0]}): choose "
            f"model=mobilenetv3_{TORCHVISION_MODELS[name][1]} with width_mult 1.0"
        )
    mapped = {}
    head = {key for key, _ in target[-2:]}  # the last Linear's weight and bias
    for (source_key, tensor), (key, expected) in zip(source, target):
        if tuple(tensor.shape) != tuple(expected.shape):
            if key in head:
                continue
            raise ConfigError(
                f"init=torchvision:{name}: the first layer that differs is {key} (torchvision's "
                f"{source_key}): shape {list(tensor.shape)} there, {list(expected.shape)} here; "
                f"choose model=mobilenetv3_{TORCHVISION_MODELS[name][1]} with width_mult 1.0"
            )
        mapped[key] = tensor
    return mapped
