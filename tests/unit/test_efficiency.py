import math

import pytest
import torch
from torch import nn

from tlpipe.evaluation.efficiency import (
    compare_profiles,
    count_macs,
    measure_latency,
    measure_throughput,
    model_profile,
    profile_models,
)
from tlpipe.training.models import Classifier, build_backbone, count_parameters

TINY = dict(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1])


def tiny_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return build_backbone(arch="resnet", in_channels=1, **TINY)


def conv_linear():
    # [B, 3, 6, 6] -> conv [B, 5, 6, 6] -> flatten [B, 180] -> linear [B, 4]
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.Flatten(), nn.Linear(180, 4))


CONV_MACS = 5 * 6 * 6 * 3 * 3 * 3  # output elements x (in_channels x kernel area)


@pytest.mark.parametrize(
    "model, shape, macs",
    [
        (nn.Linear(8, 4), (8,), 8 * 4),
        (nn.Conv2d(3, 5, 3, padding=1), (3, 6, 6), CONV_MACS),
        (conv_linear(), (3, 6, 6), CONV_MACS + 180 * 4),
    ],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_count_macs_matches_hand_counts(model, shape, macs, batch):
    assert count_macs(model, torch.randn(batch, *shape)) == batch * macs


@pytest.mark.parametrize("training", [True, False])
def test_count_macs_restores_training_mode(training):
    model = Classifier(tiny_backbone(), 3).train(training)
    model.head.train(not training)  # a mixed state must come back as it was, module by module
    count_macs(model, torch.randn(1, 1, 16, 16))
    assert model.training is training and model.backbone.training is training
    assert model.head.training is not training


def test_count_macs_of_backbone_is_positive_and_linear_in_batch():
    backbone = tiny_backbone()
    one = count_macs(backbone, torch.randn(1, 1, 16, 16))
    assert one > 0
    assert count_macs(backbone, torch.randn(3, 1, 16, 16)) == 3 * one


def finite_positive(value) -> bool:
    return math.isfinite(value) and value > 0


def test_measure_latency_gives_positive_finite_seconds():
    result = measure_latency(conv_linear(), torch.randn(1, 3, 6, 6), warmup=0, repeats=5)
    assert result["repeats"] == 5 and result["batch"] == 1
    assert all(finite_positive(result[key]) for key in ("median_s", "p90_s", "mean_s"))
    assert result["p90_s"] >= result["median_s"]


def test_measure_throughput_uses_the_batch_size():
    model = conv_linear().train()
    result = measure_throughput(model, torch.randn(16, 3, 6, 6), warmup=1, repeats=3)
    assert result["batch"] == 16 and result["repeats"] == 3
    assert finite_positive(result["images_per_s"]) and finite_positive(result["median_s"])
    assert result["images_per_s"] == pytest.approx(16 / result["median_s"])
    assert model.training


def test_model_profile_of_backbone():
    backbone = tiny_backbone().train()
    profile = model_profile(backbone, input_shape=(1, 16, 16), latency_repeats=3, throughput_batch=8,
                            throughput_repeats=2)
    assert set(profile) == {"parameters", "macs", "latency_ms", "latency_p90_ms", "throughput_ips",
                            "throughput_batch"}
    assert profile["parameters"] == count_parameters(backbone)
    assert profile["macs"] == count_macs(backbone, torch.zeros(1, 1, 16, 16))
    assert profile["throughput_batch"] == 8
    assert all(finite_positive(profile[k]) for k in ("latency_ms", "latency_p90_ms", "throughput_ips"))
    assert backbone.training  # eval only while measuring


def test_model_profile_of_plain_module():
    profile = model_profile(nn.Linear(8, 4), input_shape=(8,), latency_repeats=2, throughput_repeats=1)
    assert profile["parameters"] == 36 and profile["macs"] == 32 and profile["throughput_batch"] == 64


class Recorder(nn.Module):
    """Identity that notes its name and batch size on every forward pass."""

    def __init__(self, name: str, calls: list):
        super().__init__()
        self.name, self.calls, self.weight = name, calls, nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.calls.append((self.name, x.shape[0]))
        return x * self.weight


def test_profile_models_times_the_models_in_turns():
    calls = []
    models = {"teacher": Recorder("teacher", calls), "student": Recorder("student", calls)}
    profiles = profile_models(models, input_shape=(4,), rounds=3, latency_repeats=2, throughput_batch=5,
                              throughput_repeats=2)
    timed = [name for name, _ in calls]
    blocks = [name for i, name in enumerate(timed) if i == 0 or timed[i - 1] != name]
    assert blocks == ["teacher", "student"] * 3 + ["teacher", "student"]  # 3 rounds, then the MAC count
    assert set(profiles) == {"teacher", "student"}
    assert all(p["parameters"] == 1 and p["throughput_batch"] == 5 and finite_positive(p["throughput_ips"])
               for p in profiles.values())


def test_profile_models_needs_a_model():
    with pytest.raises(ValueError, match="models is empty"):
        profile_models({}, input_shape=(4,))
    with pytest.raises(ValueError, match="rounds=0"):
        profile_models({"m": nn.Linear(4, 4)}, input_shape=(4,), rounds=0)


def profile(parameters, macs, latency_ms, throughput_ips):
    return dict(parameters=parameters, macs=macs, latency_ms=latency_ms, latency_p90_ms=latency_ms,
                throughput_ips=throughput_ips, throughput_batch=64)


def test_compare_profiles_ratios():
    profiles = {"teacher": profile(400, 1000, 8.0, 500.0), "student": profile(100, 250, 2.0, 1500.0)}
    ratios = compare_profiles(profiles, reference="teacher")
    assert ratios["teacher"] == dict(parameters_ratio=1.0, macs_ratio=1.0, latency_speedup=1.0,
                                     throughput_ratio=1.0)
    assert ratios["student"] == pytest.approx(dict(parameters_ratio=0.25, macs_ratio=0.25,
                                                   latency_speedup=4.0, throughput_ratio=3.0))


def test_compare_profiles_rejects_bad_input():
    profiles = {"teacher": profile(400, 1000, 8.0, 500.0)}
    with pytest.raises(ValueError, match="reference='student' is not one of 'teacher'"):
        compare_profiles(profiles, reference="student")
    with pytest.raises(ValueError, match="profiles\\['bad'\\] lacks macs"):
        compare_profiles({**profiles, "bad": {"parameters": 1, "latency_ms": 1, "throughput_ips": 1}},
                         reference="teacher")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(repeats=0), "repeats=0"),
        (dict(warmup=-1), "warmup=-1"),
        (dict(repeats=2.0), "repeats=2.0"),
    ],
)
@pytest.mark.parametrize("measure", [measure_latency, measure_throughput])
def test_measurements_reject_bad_counts(measure, kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure(nn.Linear(8, 4), torch.randn(1, 8), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_shape=()), "input_shape"),
        (dict(input_shape=(1, 0, 16)), "input_shape"),
        (dict(input_shape=(1, 16.0)), "input_shape"),
        (dict(input_shape=(8,), latency_repeats=0), "latency_repeats=0"),
        (dict(input_shape=(8,), throughput_batch=0), "throughput_batch=0"),
        (dict(input_shape=(8,), throughput_repeats=-2), "throughput_repeats=-2"),
        (dict(input_shape=(8,), device="tpu"), "device='tpu'"),
    ],
)
def test_model_profile_rejects_bad_arguments(kwargs, match):
    model = nn.Linear(8, 4)
    with pytest.raises(ValueError, match=match):
        model_profile(model, **kwargs)
