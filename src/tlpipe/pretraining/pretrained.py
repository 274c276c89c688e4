"""A classifier trained elsewhere, with its own head, as the surrogate (DP4TL, Zhang et al. 2023, lets
the source model itself vote: label mapping only needs source-class logits of the target images).

The model is a `transformers` image classifier (a `save_pretrained` folder or a hub id). Its labels
(`config.id2label`) must name every class of the source; the head's rows of those labels, in the
source's class order, become the head of a `Classifier` over the model's own backbone, so the votes
are the model's logits for the source classes and nothing is trained. The model sees the pixels as it
was trained on them: normalised with the mean and std of its image processor (preprocessor_config.json),
else ImageNet's, which every ResNet and ConvNeXt image processor of `transformers` defaults to.
"""

from __future__ import annotations

import torch
from torch import nn

from tlpipe.training.models import Classifier

ARCHITECTURES = ("resnet", "convnext")  # backbones whose pooled output the head reads (models.embed)
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def labels(config) -> list[str]:
    """The classifier's label names in the order of its outputs."""
    return [str(config.id2label[i]) for i in sorted(int(k) for k in config.id2label)]


def check(name: str, class_names: list[str], channels: int) -> None:
    """Checks the classifier `name` against the source before anything loads its weights.

    Raises:
        ValueError: an architecture not in `ARCHITECTURES`, another channel count, or labels that do not
            name every source class (the message counts them and gives a few of each).
    """
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name!r} is neither a saved classifier folder nor a reachable hub id "
                         f"({type(exc).__name__})") from None
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"{name!r} is a {config.model_type} classifier; supported: {', '.join(ARCHITECTURES)}")
    if getattr(config, "num_channels", channels) != channels:
        raise ValueError(f"{name!r} takes {config.num_channels}-channel images; the source has {channels}")
    own = labels(config)
    missing = [c for c in class_names if c not in set(own)]
    if missing:
        raise ValueError(
            f"the labels of {name!r} do not name {len(missing)} of the source's {len(class_names)} classes "
            f"(e.g. {', '.join(repr(c) for c in missing[:3])}; its labels are e.g. "
            f"{', '.join(repr(c) for c in own[:3])}): its votes must be for the source's classes")
    if len(set(own)) != len(own):
        raise ValueError(f"the labels of {name!r} name a class twice")


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, where they come from) of the inputs the classifier `name` was trained on: its image
    processor's `image_mean` / `image_std` (preprocessor_config.json), else ImageNet's."""
    import transformers

    try:
        config = transformers.ImageProcessingMixin.get_image_processor_dict(name)[0]
    except (OSError, ValueError):  # no preprocessor_config.json (a bare save_pretrained folder)
        config = {}
    mean, std = config.get("image_mean"), config.get("image_std")
    if mean is None or std is None:
        return (*IMAGENET_NORM, "ImageNet (no image processor statistics)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), "preprocessor_config.json"


def load(name: str, class_names: list[str]) -> Classifier:
    """The classifier `name` as a `Classifier` over `class_names` (see the module docstring)."""
    import transformers

    model = transformers.AutoModelForImageClassification.from_pretrained(name, use_safetensors=True)
    head = _final_linear(model.classifier)
    position = {label: i for i, label in enumerate(labels(model.config))}
    rows = torch.tensor([position[c] for c in class_names])
    mean, std, _ = normalization(name)
    channels = getattr(model.config, "num_channels", len(mean))
    if len(mean) != channels:  # e.g. a grayscale model with RGB statistics: their channel average
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    classifier = Classifier(model.base_model, num_classes=len(class_names), input_norm=(mean, std))
    with torch.no_grad():
        classifier.head.weight.copy_(head.weight[rows])
        classifier.head.bias.copy_(head.bias[rows])
    return classifier.eval()


def _final_linear(module: nn.Module) -> nn.Linear:
    """ResNet's head is Flatten + Linear, ConvNeXt's a Linear."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ValueError(f"the classifier head {type(module).__name__} is not one linear layer")
    return linears[0]
