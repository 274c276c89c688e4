"""A pretrained classifier's head restricted to the source's classes (tlpipe.pretraining.pretrained)."""

import pytest
import torch
import transformers

from tlpipe.pretraining import pretrained
from tlpipe.training import models

LABELS = ["cat", "dog", "car", "tree"]


def saved(tmp_path, config) -> str:
    torch.manual_seed(0)
    config.id2label, config.label2id = dict(enumerate(LABELS)), {n: i for i, n in enumerate(LABELS)}
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(tmp_path / "m")
    return str(tmp_path / "m")


@pytest.mark.parametrize("config", [
    transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    transformers.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=4),
], ids=["resnet", "convnext"])
def test_the_logits_are_the_models_own_for_the_source_classes_in_their_order(tmp_path, config):
    name = saved(tmp_path, config)
    source = ["tree", "cat", "car"]
    pretrained.check(name, source, channels=3)
    classifier = pretrained.load(name, source)
    model = transformers.AutoModelForImageClassification.from_pretrained(name).eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1  # the loops' pixels, in [-1, 1]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in pretrained.IMAGENET_NORM)  # no image processor saved
    with torch.no_grad():
        theirs = model(pixel_values=((x + 1) / 2 - mean) / std).logits[:, [3, 0, 2]]
        assert torch.allclose(classifier(x), theirs, atol=1e-5)


def test_the_model_sees_its_image_processors_normalisation_and_keeps_it_when_saved(tmp_path):
    name = saved(tmp_path, transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                     depths=[1, 1], layer_type="basic"))
    transformers.ConvNextImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(name)
    assert pretrained.normalization(name) == ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "preprocessor_config.json")
    classifier = pretrained.load(name, LABELS)
    model = transformers.AutoModelForImageClassification.from_pretrained(name).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(classifier(x), model(pixel_values=((x + 1) / 2 - mean) / std).logits, atol=1e-5)
        models.save_classifier(classifier, tmp_path / "saved")
        again = models.load_classifier(tmp_path / "saved")
        assert again.input_norm == classifier.input_norm and torch.equal(again(x), classifier(x))
        assert models.load_classifier(_plain(tmp_path)).input_norm is None  # a classifier trained here has none


def _plain(tmp_path):
    plain = models.Classifier(models.build_backbone(in_channels=3, embedding_size=4, hidden_sizes=[4], depths=[1]), 2)
    models.save_classifier(plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / models.INPUT_NORM).exists()
    return tmp_path / "plain"


def test_what_cannot_serve_as_the_surrogate_is_named(tmp_path):
    resnet = saved(tmp_path, transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8],
                                                        depths=[1], layer_type="basic"))
    with pytest.raises(ValueError, match="do not name 1 of the source's 2 classes \\(e.g. 'bird'"):
        pretrained.check(resnet, ["cat", "bird"], channels=3)
    with pytest.raises(ValueError, match="takes 3-channel images; the source has 1"):
        pretrained.check(resnet, ["cat"], channels=1)
    vit = tmp_path / "vit"
    transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                           image_size=32, patch_size=8).save_pretrained(vit)
    with pytest.raises(ValueError, match="is a vit classifier; supported: resnet, convnext"):
        pretrained.check(str(vit), ["cat"], channels=3)
    with pytest.raises(ValueError, match="neither a saved classifier folder nor a reachable hub id"):
        pretrained.check(str(tmp_path / "nothing-here"), ["cat"], channels=3)
