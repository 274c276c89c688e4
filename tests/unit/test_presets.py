"""The presets of real backbones at 224 px (params/presets/): valid params, and the networks they build
have the sizes the papers and torchvision give (parameters without the classification head)."""

from pathlib import Path

import pytest
import torch

from project import paramfiles
from project.schema import ParamsError
from tlpipe.training import models

REPO = Path(__file__).resolve().parents[2]
# torchvision's resnet18/resnet50/convnext_tiny less their final Linear; timm's vit_small_patch16_224
# less its head, plus the pooler transformers' ViTModel has (384 x 384 + 384)
BACKBONE_PARAMETERS = {"resnet18-224": 11_176_512, "resnet50-224": 23_508_032, "convnext-t-224": 27_820_128,
                       "vit-s16-224": 21_665_664 + 147_840}


def test_every_preset_is_listed_here():
    assert paramfiles.presets(REPO) == sorted(BACKBONE_PARAMETERS)


@pytest.mark.parametrize("name", sorted(BACKBONE_PARAMETERS))
def test_a_preset_gives_valid_params_and_its_teacher_has_the_papers_size(name):
    params, touched = paramfiles.apply_overrides(paramfiles.load_all_params(REPO), paramfiles.load_preset(REPO, name))
    assert params["prepare"]["image_size"] == 224 and "pretrain" in touched
    teacher = models.build_backbone(in_channels=3, **params["pretrain"]["model"]).eval()
    assert models.count_parameters(teacher) == BACKBONE_PARAMETERS[name]
    with torch.no_grad():
        features = models.embed(teacher, torch.zeros(1, 3, 224, 224))
    assert features.shape == (1, models.feature_dim(teacher))


def test_the_command_line_still_wins_over_a_preset_and_bad_presets_are_named(tmp_path):
    overrides = [*paramfiles.load_preset(REPO, "resnet50-224"), "pretrain.batch_size=32"]
    params, _ = paramfiles.apply_overrides(paramfiles.load_all_params(REPO), overrides)
    assert params["pretrain"]["batch_size"] == 32 and params["distill"]["model"]["depths"] == [2, 2, 2, 2]
    with pytest.raises(ParamsError, match="preset 'resnet-1000': no such file .* presets here: convnext-t-224"):
        paramfiles.load_preset(REPO, "resnet-1000")
    bad = tmp_path / "mine.yaml"
    bad.write_text("pretrian: {epochs: 2}\n")
    with pytest.raises(ParamsError, match="unknown stage 'pretrian'"):
        paramfiles.load_preset(REPO, str(bad))
    vit = tmp_path / "vit.yaml"
    vit.write_text("pretrain: {model: {arch: vit, hidden_sizes: [100], depths: [2]}}\n")
    with pytest.raises(ParamsError, match="arch=vit takes one stage: hidden_sizes=\\[width\\] \\(a multiple of 64"):
        paramfiles.apply_overrides(paramfiles.load_all_params(REPO), paramfiles.load_preset(REPO, str(vit)))
