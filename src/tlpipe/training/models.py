"""Backbones from `transformers`, the heads put on them, and their safetensors checkpoints.

Tiny CPU defaults, measured on the built-in data (glyphs 16.9k train / 1.9k val, 94 classes;
digits 32x32) on 2 CPU cores, torch 2.13, default threads, NCHW fp32:

    DEFAULTS = {
        "surrogate": {"model": {"arch": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32, 64],
                                "depths": [1, 1, 1]},  # 77.7k params
                      "epochs": 5, "batch_size": 128, "lr": 6e-3, "weight_decay": 5e-4},
                      # full source: ~20 s, ~4.1k img/s, val 0.90
        "pretrain": {"model": {"arch": "resnet", "embedding_size": 32, "hidden_sizes": [32, 64, 128],
                               "depths": [1, 1, 1]},  # 308k params
                     "epochs": 8, "batch_size": 128, "lr": 6e-3, "weight_decay": 5e-4, "label_smoothing": 0.1},
                     # 20 % source: ~19 s, val 0.82; full source: ~60 s, val 0.93
        "distill": {"model": {"arch": "resnet", "embedding_size": 8, "hidden_sizes": [64],
                              "depths": [1], "downsample_in_first_stage": True},  # 42.8k params, 14 % of the teacher
                    "epochs": 10, "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4,
                    "queue_size": 4096, "tau_s": 0.2, "tau_t": 0.05, "augment": True},
                    # 1.2k target + 3.8k source: ~22-27 s, ~2.2k img/s
        "finetune": {"mode": "full", "epochs": 30, "batch_size": 32, "lr": 3e-3, "weight_decay": 5e-4},
    }

The ResNet stem (7x7 stride-2 conv + max-pool, not configurable) takes 32x32 to 8x8 at once.
That is fine here: ConvNeXt with a gentler stem (patch 4: 8x8; patch 2: 16x16) reached val 0.50
and 0.05 in the same 8 epochs (ResNet 0.82) and patch 2 ran 2.6x slower, so "resnet" is the default.
"""

import hashlib
import json
from pathlib import Path

import safetensors.torch
import torch
import transformers
from torch import nn

from tlpipe.training.runtime import to_float

ARCHS = ("resnet", "convnext", "vit")
LAYER_TYPES = ("basic", "bottleneck")  # ResNet blocks: two 3x3 convs (ResNet-18/34), 1-3-1 (ResNet-50 and up)
VIT_HEAD_DIM = 64  # ViT: width per attention head (ViT-S/16: 384 = 6 heads, ViT-B/16: 768 = 12)


def _backbone_config(arch: str, in_channels: int, embedding_size: int, hidden_sizes: list[int], depths: list[int],
                     patch_size: int, downsample_in_first_stage: bool, layer_type: str) -> transformers.PretrainedConfig:
    if arch == "resnet":
        # The stem (7x7 stride-2 conv + stride-2 max-pool) is fixed: 32x32 -> 8x8 before stage 1,
        # which halves it once more (-> 4x4) when downsample_in_first_stage is set.
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type={layer_type!r} is not one of {', '.join(LAYER_TYPES)}")
        return transformers.ResNetConfig(
            num_channels=in_channels, embedding_size=embedding_size, hidden_sizes=list(hidden_sizes),
            depths=list(depths), layer_type=layer_type, downsample_in_first_stage=downsample_in_first_stage,
        )
    if arch == "vit":
        # One stage: hidden_sizes = [width], depths = [layers]; heads of VIT_HEAD_DIM, MLP 4x the width.
        # Any image size: the position embeddings are interpolated (embed passes interpolate_pos_encoding).
        (width,), (layers,) = hidden_sizes, depths
        if width % VIT_HEAD_DIM:
            raise ValueError(f"vit: hidden_sizes=[{width}] must be a multiple of {VIT_HEAD_DIM} (one head per {VIT_HEAD_DIM})")
        return transformers.ViTConfig(num_channels=in_channels, hidden_size=width, num_hidden_layers=layers,
                                      num_attention_heads=width // VIT_HEAD_DIM, intermediate_size=4 * width,
                                      patch_size=patch_size, image_size=224)
    # ConvNeXt: patchify stem of stride `patch_size`, then a 2x2 stride-2 conv between stages.
    # Its stem width is hidden_sizes[0]; embedding_size has no counterpart here.
    return transformers.ConvNextConfig(
        num_channels=in_channels, patch_size=patch_size, num_stages=len(hidden_sizes),
        hidden_sizes=list(hidden_sizes), depths=list(depths), image_size=32,
    )


def build_backbone(
    *,
    arch: str = "resnet",
    in_channels: int = 1,
    embedding_size: int,
    hidden_sizes: list[int],
    depths: list[int],
    patch_size: int = 2,
    downsample_in_first_stage: bool = False,
    layer_type: str = "basic",
    pretrained: str | None = None,
) -> transformers.PreTrainedModel:
    """Builds a backbone from a config with fresh weights, or loads a saved/pretrained one.

    Args:
        arch: one of `ARCHS`.
        in_channels: image channels (1 for the built-in glyphs and digits).
        embedding_size: ResNet stem width (ignored by ConvNeXt and ViT).
        hidden_sizes: channels of each stage; the last is the feature dimension (ViT: one entry, its width).
        depths: blocks in each stage, same length as `hidden_sizes` (ViT: one entry, its layers).
        patch_size: ConvNeXt stem stride; ViT patch side (ignored by ResNet).
        downsample_in_first_stage: ResNet: the first stage strides by 2 like the others, so every
            stage runs at half the resolution and costs about a quarter of the multiply-accumulates
            (ignored by ConvNeXt, which always downsamples between stages only).
        layer_type: ResNet block, one of `LAYER_TYPES`.
        pretrained: a local directory written by `save_backbone` or a hub id; when given,
            the architecture arguments are ignored and the saved config is used.

    Returns:
        A `transformers` model whose forward takes `pixel_values` [B, C, H, W].

    Raises:
        ValueError: unknown `arch`, mismatched `hidden_sizes`/`depths`, or a pretrained
            model whose channel count differs from `in_channels`.
    """
    if pretrained is not None:
        backbone = load_backbone(pretrained)
        if backbone.config.num_channels != in_channels:
            raise ValueError(f"pretrained={pretrained!r} takes {backbone.config.num_channels} channels, "
                             f"in_channels={in_channels}")
        return backbone
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not one of {', '.join(ARCHS)}")
    if len(hidden_sizes) != len(depths) or not hidden_sizes:
        raise ValueError(f"hidden_sizes={hidden_sizes} and depths={depths} must be non-empty, same length")
    if arch == "vit" and len(hidden_sizes) != 1:
        raise ValueError(f"vit has one stage: hidden_sizes={hidden_sizes} and depths={depths} take one entry each")
    config = _backbone_config(arch, in_channels, embedding_size, hidden_sizes, depths, patch_size,
                              downsample_in_first_stage, layer_type)
    return transformers.AutoModel.from_config(config)


def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features: float pixels [B, C, H, W] -> [B, D]."""
    if backbone.config.model_type == "vit":  # its pooled class token, at any image size
        return backbone(pixel_values=x, interpolate_pos_encoding=True).pooler_output
    pooled = backbone(pixel_values=x).pooler_output  # ResNet [B, D, 1, 1]; ConvNeXt [B, D]
    return pooled.flatten(1)


def feature_dim(backbone: nn.Module) -> int:
    """D, the width of `embed`'s output."""
    config = backbone.config
    return int(config.hidden_sizes[-1] if hasattr(config, "hidden_sizes") else config.hidden_size)


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in module.parameters())


class Classifier(nn.Module):
    """A backbone and a linear head: pixels [B, C, H, W] -> logits [B, num_classes].

    The pixels are the loops' float pixels in [-1, 1]. A model trained elsewhere under another
    normalisation (a hub classifier: (pixels in [0, 1] - mean) / std per channel) gets it as
    `input_norm` = (mean, std), applied first, so that it sees its own inputs.
    """

    def __init__(self, backbone: nn.Module, num_classes: int,
                 input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim(backbone), num_classes)
        self.input_norm = None if input_norm is None else tuple(tuple(float(v) for v in part) for part in input_norm)
        if self.input_norm is not None:
            mean, std = (torch.tensor(part).view(1, -1, 1, 1) for part in self.input_norm)
            # x in [-1, 1]: ((x + 1) / 2 - mean) / std = x * 0.5 / std + (0.5 - mean) / std
            self.register_buffer("input_scale", 0.5 / std)
            self.register_buffer("input_shift", (0.5 - mean) / std)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """Logits [B, num_classes], or (logits, pooled features [B, D]) `with_features`."""
        if self.input_norm is not None:
            x = x * self.input_scale + self.input_shift
        features = embed(self.backbone, x)
        logits = self.head(features)
        return (logits, features) if with_features else logits


class ProjectionHead(nn.Module):
    """MLP Linear-BN-ReLU-Linear mapping student features [B, in_dim] to [B, out_dim].

    SEED (Fang et al., ICLR 2021) puts such a head on the student so its embedding lives in the
    teacher's dimension; it is dropped after distillation.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = hidden_dim or max(in_dim, out_dim)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),  # BN follows, a bias would be redundant
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectedBackbone(nn.Module):
    """Backbone + projection head: pixels [B, C, H, W] -> projections [B, out_dim].

    The training wrapper of distillation (SEED) and self-supervised pretraining (SimCLR, BYOL);
    only `backbone` is kept afterwards.
    """

    def __init__(self, backbone: nn.Module, out_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(feature_dim(backbone), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(embed(self.backbone, x))


def save_backbone(backbone: transformers.PreTrainedModel, path: str | Path) -> None:
    """Writes config.json + model.safetensors to the directory `path` (byte-identical for equal weights),
    the files `save_pretrained` writes and `load_backbone` reads. Written here rather than by
    `save_pretrained`, which writes nothing on ranks other than 0 of a process group: every host of a
    data-parallel stage writes its outputs."""
    Path(path).mkdir(parents=True, exist_ok=True)
    backbone.config.dtype = str(backbone.dtype).split(".")[1]  # what save_pretrained records, as it does
    backbone.config.architectures = [type(backbone).__name__]
    backbone.config.save_pretrained(str(path))
    state = {name: t.detach().cpu().contiguous() for name, t in backbone.state_dict().items()}
    safetensors.torch.save_file(state, str(Path(path) / "model.safetensors"), metadata={"format": "pt"})


def load_backbone(path: str | Path) -> transformers.PreTrainedModel:
    """Loads a backbone saved by `save_backbone` (or a hub id); safetensors only, never pickle."""
    return transformers.AutoModel.from_pretrained(str(path), use_safetensors=True)


def save_module(module: nn.Module, path: str | Path) -> None:
    """Writes a module's state dict (parameters and buffers) to one safetensors file."""
    state = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    safetensors.torch.save_file(state, str(path))


def load_module_state(module: nn.Module, path: str | Path) -> nn.Module:
    """Loads a safetensors file written by `save_module` into `module` (strict) and returns it."""
    module.load_state_dict(safetensors.torch.load_file(str(path)), strict=True)
    return module


INPUT_NORM = "input_norm.json"  # beside head.safetensors, for a classifier with its own input normalisation


def save_classifier(model: Classifier, path: str | Path) -> None:
    """Writes a Classifier as a folder: backbone/ (config + safetensors), head.safetensors and, when it
    has one, its input normalisation (input_norm.json: mean, std)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_backbone(model.backbone, path / "backbone")
    save_module(model.head, path / "head.safetensors")
    if model.input_norm is not None:
        mean, std = model.input_norm
        (path / INPUT_NORM).write_text(json.dumps({"mean": list(mean), "std": list(std)}, sort_keys=True) + "\n")


def load_classifier(path: str | Path) -> Classifier:
    """Loads a Classifier written by `save_classifier`; the head's size comes from its weights."""
    path = Path(path)
    head = safetensors.torch.load_file(str(path / "head.safetensors"))
    norm = json.loads((path / INPUT_NORM).read_text()) if (path / INPUT_NORM).is_file() else None
    model = Classifier(load_backbone(path / "backbone"), num_classes=head["weight"].shape[0],
                       input_norm=None if norm is None else (norm["mean"], norm["std"]))
    model.head.load_state_dict(head, strict=True)
    return model.eval()


class PixelClassifier(nn.Module):
    """The deployable form of a Classifier: uint8 pixels [B, C, H, W] -> logits, scaling built in."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(to_float(pixels))


class PooledBackbone(nn.Module):
    """A backbone as deployed for features: float pixels [B, C, H, W] -> pooled embedding [B, D]."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.backbone, x)


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's config (for transformers models) and state (names, shapes, bytes): equal
    for equal weights wherever they came from, so it can key results computed from the module."""
    config = module.config.to_json_string() if hasattr(module, "config") else ""
    digest = hashlib.sha256(config.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
