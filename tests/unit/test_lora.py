"""LoRA through peft (tlpipe.finetuning.lora): which layers it adapts per architecture, that it starts
from the pretrained function, trains only the adapters and the head, and merges to W + alpha / r * B A."""

import numpy as np
import pytest
import torch
import transformers

from tlpipe.finetuning import lora
from tlpipe.training import loops, models


def backbone(arch: str):
    sizes = {"vit": ([64], [2]), "resnet": ([16], [2]), "convnext": ([8, 16], [1, 1])}[arch]
    return models.build_backbone(arch=arch, in_channels=1, embedding_size=8, hidden_sizes=sizes[0], depths=sizes[1])


def test_the_targets_are_attention_query_value_convnext_pointwise_and_resnet_block_convolutions():
    assert lora.target_modules(backbone("vit")) == [f"layers.{i}.attention.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert lora.target_modules(backbone("convnext")) == [f"encoder.stages.{s}.layers.0.{p}" for s in (0, 1)
                                                          for p in ("pwconv1", "pwconv2")]
    assert lora.target_modules(backbone("resnet")) == [f"encoder.stages.0.layers.{b}.layer.{c}.convolution"
                                                        for b in (0, 1) for c in (0, 1)]  # not the stem or shortcuts


def test_an_architecture_it_cannot_adapt_is_refused_in_one_line():
    regnet = transformers.RegNetModel(transformers.RegNetConfig(num_channels=1, hidden_sizes=[8], depths=[1],
                                                                embedding_size=8, groups_width=8))
    with pytest.raises(ValueError, match=r"^lora: a regnet backbone has no layer LoRA targets here .*use method full"):
        lora.target_modules(regnet)
    with pytest.raises(ValueError, match="r=0"):
        lora.add(models.Classifier(backbone("vit"), 3), r=0)


@pytest.mark.parametrize("arch", ["vit", "resnet", "convnext"])
def test_adapters_start_at_the_pretrained_function_train_alone_and_merge_into_a_plain_backbone(arch):
    torch.manual_seed(0)
    classifier = models.Classifier(backbone(arch), 3).eval()
    x = torch.randn(2, 1, 32, 32)
    before, names = classifier(x), set(classifier.state_dict())
    lora.add(classifier, r=2, alpha=4.0)
    assert torch.allclose(classifier(x), before, atol=1e-6)  # B starts at 0
    trainable = {n for n, p in classifier.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {n for n in trainable if n.startswith("head.")} == {"head.weight", "head.bias"}
    with torch.no_grad():
        for name, p in classifier.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    adapted = classifier(x)
    assert not torch.equal(adapted, before)  # (ConvNeXt scales each block by a layer scale of 1e-6 at first)
    lora.merge(classifier)
    assert type(classifier.backbone).__module__.startswith("transformers.")
    assert set(classifier.state_dict()) == names and all(p.requires_grad for p in classifier.parameters())
    assert torch.allclose(classifier(x), adapted, atol=1e-5)


def test_the_merged_weight_is_w_plus_alpha_over_r_times_b_a():
    classifier = models.Classifier(backbone("vit"), 3)
    w = classifier.backbone.get_submodule("layers.0.attention.q_proj").weight.detach().clone()
    lora.add(classifier, r=2, alpha=6.0)
    layer = classifier.backbone.base_model.model.get_submodule("layers.0.attention.q_proj")
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64) / 1000)
        layer.lora_B["default"].weight.copy_(torch.arange(64 * 2, dtype=torch.float32).reshape(64, 2) / 100)
    a, b = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    lora.merge(classifier)
    merged = classifier.backbone.get_submodule("layers.0.attention.q_proj").weight
    assert torch.allclose(merged, w + 3.0 * b @ a, atol=1e-6)  # alpha / r = 3


def test_lora_fine_tuning_trains_the_adapters_only_and_gives_a_plain_classifier(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (12, 1, 32, 32), dtype=np.uint8), np.arange(12) % 3
    start = backbone("resnet")
    model, metrics = loops.finetune(start, images, labels, num_classes=3, method="lora", epochs=2, batch_size=4,
                                    lr=1e-2, weight_decay=0.0, seed=0, device=torch.device("cpu"),
                                    method_params={"r": 2, "alpha": 2.0, "dropout": 0.0})
    assert 0 < metrics["trained_parameters"] < models.count_parameters(model)
    assert models.count_parameters(model.backbone) == models.count_parameters(start)
    # only the adapted convolutions moved (merged); the stem did not, and the norms' affine weights did not
    after = dict(model.backbone.named_parameters())
    for name, p in start.named_parameters():
        adapted = any(name.startswith(t + ".") for t in lora.target_modules(start))
        assert torch.equal(after[name], p) != adapted, name
    models.save_classifier(model, tmp_path / "classifier")
    reloaded = models.load_classifier(tmp_path / "classifier")
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(reloaded.eval()(x), model.eval()(x), atol=1e-6)
