"""Inference cost of a model: parameters, multiply-accumulates, latency and throughput.

MACs come from `torch.utils.flop_counter.FlopCounterMode`, which counts matmuls, convolutions
and attention (2 FLOPs per multiply-accumulate) and nothing else: norms, activations, pooling
and bias adds are left out, as in the MAC counts papers report for ResNets. Timings are wall
clock (`time.perf_counter`) of whole forward passes in eval mode under `torch.inference_mode`,
summarised by the median so a stray slow run (another process, a page fault) does not move them.
Compare profiles only when they were measured in one run on one machine.
"""

import contextlib
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tlpipe.training.models import count_parameters
from tlpipe.training.runtime import resolve_device

PROFILE_KEYS = ("parameters", "macs", "latency_ms", "throughput_ips")


def _check_counts(**counts: int) -> None:
    """Raises naming the first argument that is not an int >= its minimum (warmup 0, others 1)."""
    for name, value in counts.items():
        low = 0 if name == "warmup" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every submodule in eval mode, then gives each back its own training flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _synchronize(device: torch.device) -> None:
    """Waits for queued kernels, so a timer read after a forward includes them (CUDA is async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_forwards(model: nn.Module, example: torch.Tensor, warmup: int, repeats: int) -> np.ndarray:
    """Seconds of each of `repeats` forward passes, after `warmup` untimed ones."""
    times = np.empty(repeats)
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(example)
        _synchronize(example.device)
        for i in range(repeats):
            start = time.perf_counter()
            model(example)
            _synchronize(example.device)
            times[i] = time.perf_counter() - start
    return times


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example`, its whole batch included.

    Args:
        model: any module; a `transformers` backbone is called as `model(example)`.
        example: the input, e.g. [1, C, H, W] for the per-image cost.

    Returns:
        MACs (FLOPs / 2) of the matmuls, convolutions and attention in the forward pass.
        The model's training flags are left as they were.
    """
    with _eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


def measure_latency(model: nn.Module, example: torch.Tensor, *, warmup: int = 3, repeats: int = 20) -> dict:
    """Seconds per forward pass on `example` (pass batch 1 for the per-image latency).

    Args:
        model: the module, on the same device as `example`.
        example: the input [B, ...].
        warmup: untimed passes first (allocator and kernel choice settle), >= 0.
        repeats: timed passes, >= 1.

    Returns:
        dict with `median_s`, `p90_s`, `mean_s` (floats), `batch` and `repeats` (ints).

    Raises:
        ValueError: `warmup` < 0 or `repeats` < 1.
    """
    _check_counts(warmup=warmup, repeats=repeats)
    times = _time_forwards(model, example, warmup, repeats)
    return {
        "median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "mean_s": float(times.mean()),
        "batch": int(example.shape[0]),
        "repeats": repeats,
    }


def measure_throughput(model: nn.Module, example_batch: torch.Tensor, *, warmup: int = 2,
                       repeats: int = 10) -> dict:
    """Images per second when forwarding whole batches the size of `example_batch`.

    Args:
        model: the module, on the same device as `example_batch`.
        example_batch: the input [B, ...], e.g. B = 64.
        warmup: untimed passes first, >= 0.
        repeats: timed passes, >= 1.

    Returns:
        dict with `images_per_s` (B / median seconds per pass), `median_s`, `batch` and `repeats`.

    Raises:
        ValueError: `warmup` < 0 or `repeats` < 1.
    """
    _check_counts(warmup=warmup, repeats=repeats)
    times = _time_forwards(model, example_batch, warmup, repeats)
    median = float(np.median(times))
    batch = int(example_batch.shape[0])
    return {"images_per_s": batch / median, "median_s": median, "batch": batch, "repeats": repeats}


def _check_input_shape(input_shape: tuple) -> tuple[int, ...]:
    """Returns `input_shape` as a tuple of ints, or raises naming it."""
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape)
    if not ok:
        raise ValueError(f"input_shape={input_shape!r} must be a non-empty tuple of positive ints, "
                         "e.g. (1, 32, 32)")
    return tuple(input_shape)


@contextlib.contextmanager
def _on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Moves `model` to `device` (in place) and back to where its first parameter was."""
    home = next(iter(model.parameters()), torch.empty(0)).device
    try:
        yield model.to(device)
    finally:
        model.to(home)


def profile_models(models: dict[str, nn.Module], *, input_shape: tuple, rounds: int = 5,
                   latency_repeats: int = 20, throughput_batch: int = 64, throughput_repeats: int = 10,
                   device: str = "cpu") -> dict[str, dict]:
    """Parameters, MACs, batch-1 latency and batch throughput of several models, timed in turns.

    Every round times every model once (`latency_repeats` batch-1 passes, then `throughput_repeats`
    batch passes), and the medians are taken over all rounds. So a slow spell of the machine (another
    process, a clock change) falls on all the models alike instead of on whichever was being timed,
    which is what a ratio between them needs.

    Args:
        models: name -> a plain module or a `transformers` backbone (called as `model(x)`).
        input_shape: one input without the batch dimension, e.g. (1, 32, 32).
        rounds: alternating measurement rounds, >= 1.
        latency_repeats: timed batch-1 passes per round, >= 1.
        throughput_batch: images per batch for the throughput, >= 1.
        throughput_repeats: timed batch passes per round, >= 1.
        device: where to measure (see `tlpipe.training.runtime.DEVICE_NAMES`); each model is moved there
            and back afterwards, its training flags restored.

    Returns:
        name -> dict with `parameters`, `macs` (batch 1), `latency_ms` (median, batch 1),
        `latency_p90_ms`, `throughput_ips` (images/s at `throughput_batch`) and `throughput_batch`.

    Raises:
        ValueError: no models, a count below its minimum, a bad `input_shape`, or an unknown or
            missing device.
    """
    if not models:
        raise ValueError("models is empty; give at least one name -> module")
    _check_counts(rounds=rounds, latency_repeats=latency_repeats, throughput_batch=throughput_batch,
                  throughput_repeats=throughput_repeats)
    shape = _check_input_shape(input_shape)
    target = resolve_device(device)
    generator = torch.Generator().manual_seed(0)  # same inputs for every model profiled
    one = torch.randn((1, *shape), generator=generator).to(target)
    batch = torch.randn((throughput_batch, *shape), generator=generator).to(target)
    single = {name: [] for name in models}
    batched = {name: [] for name in models}
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(_on_device(model, target))
        for round_ in range(rounds):
            for name, model in models.items():
                single[name].append(_time_forwards(model, one, 3 if round_ == 0 else 1, latency_repeats))
                batched[name].append(_time_forwards(model, batch, 2 if round_ == 0 else 1, throughput_repeats))
        macs = {name: count_macs(model, one) for name, model in models.items()}
    profiles = {}
    for name, model in models.items():
        latency, per_batch = np.concatenate(single[name]), np.concatenate(batched[name])
        profiles[name] = {
            "parameters": count_parameters(model),
            "macs": macs[name],
            "latency_ms": float(np.median(latency)) * 1e3,
            "latency_p90_ms": float(np.percentile(latency, 90)) * 1e3,
            "throughput_ips": throughput_batch / float(np.median(per_batch)),
            "throughput_batch": throughput_batch,
        }
    return profiles


def model_profile(model: nn.Module, *, input_shape: tuple, latency_repeats: int = 20,
                  throughput_batch: int = 64, throughput_repeats: int = 10, device: str = "cpu") -> dict:
    """`profile_models` of one model in one round: its parameters, MACs, latency and throughput.

    Args and Returns: as `profile_models`, for the single `model`; compare two models with
    `profile_models`, not with two calls of this.
    """
    return profile_models({"model": model}, input_shape=input_shape, rounds=1, latency_repeats=latency_repeats,
                          throughput_batch=throughput_batch, throughput_repeats=throughput_repeats,
                          device=device)["model"]


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0 (e.g. a model without matmuls)."""
    return numerator / denominator if denominator else math.nan


def compare_profiles(profiles: dict[str, dict], *, reference: str) -> dict[str, dict]:
    """Each profile relative to the reference one (the reference itself gets 1.0 everywhere).

    Args:
        profiles: name -> a `model_profile` dict (at least the keys in `PROFILE_KEYS`).
        reference: the name to compare against, usually the teacher or the unpruned model.

    Returns:
        name -> dict with `parameters_ratio` and `macs_ratio` (model / reference, < 1 is smaller),
        `latency_speedup` (reference latency / latency) and `throughput_ratio`
        (throughput / reference throughput); > 1 is faster for both.

    Raises:
        ValueError: `reference` is not in `profiles`, or a profile lacks a key of `PROFILE_KEYS`.
    """
    if reference not in profiles:
        names = ", ".join(map(repr, profiles)) or "no profiles"
        raise ValueError(f"reference={reference!r} is not one of {names}")
    for name, profile in profiles.items():
        missing = [key for key in PROFILE_KEYS if key not in profile]
        if missing:
            raise ValueError(f"profiles[{name!r}] lacks {', '.join(missing)}; "
                             f"needs {', '.join(PROFILE_KEYS)}")
    ref = profiles[reference]
    return {
        name: {
            "parameters_ratio": _ratio(p["parameters"], ref["parameters"]),
            "macs_ratio": _ratio(p["macs"], ref["macs"]),
            "latency_speedup": _ratio(ref["latency_ms"], p["latency_ms"]),
            "throughput_ratio": _ratio(p["throughput_ips"], ref["throughput_ips"]),
        }
        for name, p in profiles.items()
    }
