"""LoRA (Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang and Chen, "LoRA: Low-Rank Adaptation of Large
Language Models", ICLR 2022) through Hugging Face `peft`: the backbone's weights stay frozen and each
targeted layer W gains a trainable low-rank update, W x + (alpha / r) * B A x, with A [r, in] drawn at
random and B [out, r] starting at 0 (so training starts from the pretrained function). The new head is
trained whole. After training the updates are merged into W (`merge`), so the exported classifier is a
plain backbone of the same architecture, with no peft at inference.

Which layers, by architecture (`target_modules`):
- attention (ViT and other transformers): the query and value projections, the paper's choice
  (W_q, W_v): modules named q_proj / v_proj (query / value in older transformers code);
- ConvNeXt: the two pointwise linear layers of every block (pwconv1, pwconv2);
- ResNet: the convolutions inside the residual blocks (peft's Conv2d LoRA: A a conv of the layer's
  kernel with r output channels, B a 1x1 conv); not the stem or the 1x1 shortcuts.
Any other architecture is refused. Norm layers stay frozen; BatchNorm's running statistics still
follow the target's images while training, as with full fine-tuning. The paper's r = 8 and alpha = r
(scale 1) are the defaults; dropout on the adapters' input is 0.
"""

from __future__ import annotations

import re
import warnings

from torch import nn

R, ALPHA, DROPOUT = 8, 8.0, 0.0
ATTENTION = ("q_proj", "v_proj", "query", "value")
BY_MODEL_TYPE = {
    "convnext": re.compile(r".*\.layers\.\d+\.(pwconv1|pwconv2)$"),
    "resnet": re.compile(r".*\.layers\.\d+\.layer\.\d+\.convolution$"),
}
SUPPORTED = "attention q/v projections (vit and other transformers), convnext pwconv1/pwconv2, resnet block convs"


def target_modules(backbone: nn.Module) -> list[str]:
    """The names of the backbone's modules LoRA adapts (see the module docstring).

    Raises:
        ValueError: an architecture with none of them.
    """
    model_type = getattr(getattr(backbone, "config", None), "model_type", type(backbone).__name__)
    linear = (nn.Linear, nn.Conv2d)
    names = [name for name, module in backbone.named_modules()
             if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in ATTENTION]
    if not names and model_type in BY_MODEL_TYPE:
        names = [name for name, module in backbone.named_modules()
                 if isinstance(module, linear) and BY_MODEL_TYPE[model_type].fullmatch(name)]
    if not names:
        raise ValueError(f"lora: a {model_type} backbone has no layer LoRA targets here ({SUPPORTED}); "
                         f"use method full, l2sp or bss")
    return names


def add(classifier: nn.Module, *, r: int = R, alpha: float = ALPHA, dropout: float = DROPOUT) -> nn.Module:
    """`classifier` (a `Classifier`) with its backbone wrapped by peft: only the adapters and the
    head train. Returns the classifier, changed in place."""
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"lora: r={r!r} must be an int >= 1")
    if alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"lora: alpha={alpha} must be > 0 and dropout={dropout} in [0, 1)")
    import peft

    config = peft.LoraConfig(r=r, lora_alpha=float(alpha), lora_dropout=float(dropout), bias="none",
                             target_modules=target_modules(classifier.backbone))
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 for a renamed attribute
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        classifier.backbone = peft.get_peft_model(classifier.backbone, config)
    classifier.head.requires_grad_(True)
    return classifier


def merge(classifier: nn.Module) -> nn.Module:
    """The adapters folded into the backbone's weights (W + alpha / r * B A); the backbone is again the
    plain model it was, every parameter trainable. Returns the classifier, changed in place."""
    import peft

    if isinstance(classifier.backbone, peft.PeftModel):
        classifier.backbone = classifier.backbone.merge_and_unload()
        classifier.backbone.requires_grad_(True)
    return classifier


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
