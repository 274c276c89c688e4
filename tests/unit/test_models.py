import hashlib

import pytest
import torch

from tlpipe.training.models import (
    ARCHS,
    Classifier,
    ProjectionHead,
    build_backbone,
    count_parameters,
    embed,
    feature_dim,
    load_backbone,
    load_classifier,
    load_module_state,
    save_backbone,
    save_classifier,
    save_module,
)

TINY = dict(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1])
TINY_VIT = dict(embedding_size=4, hidden_sizes=[64], depths=[1], patch_size=4)  # one stage, one head


def tiny(arch: str = "resnet", in_channels: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(arch=arch, in_channels=in_channels, **(TINY_VIT if arch == "vit" else TINY))


def md5s(folder):
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_embed_gives_pooled_features(arch, in_channels):
    backbone = tiny(arch, in_channels).eval()
    features = embed(backbone, torch.randn(5, in_channels, 16, 16))
    assert features.shape == (5, feature_dim(backbone)) == (5, 64 if arch == "vit" else 8)


def test_build_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match="resnet, convnext, vit"):
        build_backbone(arch="vgg", **TINY)
    with pytest.raises(ValueError, match="same length"):
        build_backbone(embedding_size=4, hidden_sizes=[4, 8], depths=[1])


def test_downsample_in_first_stage_quarters_the_stage_cost_and_keeps_the_weights_shape():
    from tlpipe.evaluation.efficiency import count_macs

    x = torch.randn(2, 1, 32, 32)
    plain = build_backbone(**TINY).eval()
    strided = build_backbone(**TINY, downsample_in_first_stage=True).eval()
    assert strided.config.downsample_in_first_stage and not plain.config.downsample_in_first_stage
    # the first stage's first block gets a strided 1x1 shortcut; the rest of the weights are the same
    assert count_parameters(strided) - count_parameters(plain) == 4 * 4 + 2 * 4  # conv + norm
    assert embed(strided, x).shape == embed(plain, x).shape == (2, 8)
    stem = 1 * 4 * 7 * 7 * 16 * 16  # 7x7 conv, 1 -> 4 channels, on 16x16 outputs
    stages_plain = count_macs(plain, x[:1]) - stem
    assert count_macs(strided, x[:1]) - stem < stages_plain / 3


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
    assert count_parameters(tiny()) > count_parameters(Classifier(tiny(), 3).head) > 0


@pytest.mark.parametrize("num_classes", [2, 7])
def test_classifier_forward(num_classes):
    logits = Classifier(tiny(), num_classes)(torch.randn(4, 1, 16, 16))
    assert logits.shape == (4, num_classes)


def test_projection_head_maps_dims():
    head = ProjectionHead(8, 32)
    assert head(torch.randn(6, 8)).shape == (6, 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_round_trip_and_deterministic_bytes(tmp_path, arch):
    backbone = tiny(arch).eval()
    embed(backbone, torch.randn(2, 1, 16, 16))
    save_backbone(backbone, tmp_path / "a")
    save_backbone(backbone, tmp_path / "b")
    assert md5s(tmp_path / "a") == md5s(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").exists()
    x = torch.randn(3, 1, 16, 16)
    loaded = load_backbone(tmp_path / "a").eval()
    assert torch.equal(embed(backbone, x), embed(loaded, x))
    again = build_backbone(arch="convnext", in_channels=1, pretrained=str(tmp_path / "a"), **TINY)
    assert type(again) is type(backbone)  # `pretrained` wins over the architecture arguments


def test_pretrained_channel_mismatch_is_an_error(tmp_path):
    save_backbone(tiny(in_channels=1), tmp_path)
    with pytest.raises(ValueError, match="in_channels=3"):
        build_backbone(in_channels=3, pretrained=str(tmp_path), **TINY)


def test_module_round_trip_and_deterministic_bytes(tmp_path):
    torch.manual_seed(0)
    head = ProjectionHead(8, 16)
    head(torch.randn(4, 8))  # moves the BatchNorm running statistics off their init
    save_module(head, tmp_path / "a.safetensors")
    save_module(head, tmp_path / "b.safetensors")
    digests = md5s(tmp_path)
    assert digests["a.safetensors"] == digests["b.safetensors"]
    torch.manual_seed(1)
    loaded = load_module_state(ProjectionHead(8, 16), tmp_path / "a.safetensors")
    x = torch.randn(4, 8)
    assert torch.equal(head.eval()(x), loaded.eval()(x))


def test_classifier_round_trip(tmp_path):
    model = Classifier(tiny(), 5).eval()
    save_classifier(model, tmp_path)
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(model(x), load_classifier(tmp_path)(x))


def test_save_backbone_writes_what_save_pretrained_writes(tmp_path):
    """The backbone's files are transformers' own (read back by `from_pretrained` and the hub tools),
    written by us so that every rank of a data-parallel stage can write them."""
    torch.manual_seed(0)
    backbone = build_backbone(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    save_backbone(backbone, tmp_path / "ours")
    backbone.save_pretrained(str(tmp_path / "theirs"))
    for name in ("config.json", "model.safetensors"):
        assert hashlib.md5((tmp_path / "ours" / name).read_bytes()).digest() == \
            hashlib.md5((tmp_path / "theirs" / name).read_bytes()).digest(), name
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["config.json", "model.safetensors"]
