"""The cache key changes exactly when something that shapes a stage's outputs changes."""

import pytest

from runner import keys
from runner.spec import StageSpec

SPEC = StageSpec("prune", "python -m tasks.prune", ("data/prepared",), {"params/prune.yaml": ("method", "ratio")}, ())
PARAMS = {"method": "lm", "ratio": 0.8, "seed": 0}
DEPS = {"data/prepared": "a" * 32 + ".dir"}
ENV = keys.environment("cpu", "fp32")


def key(spec=SPEC, params=PARAMS, deps=DEPS, env=ENV):
    return keys.stage_cache_key(spec, declared=spec.declared(params), dep_hashes=deps, env=env)


def test_key_is_stable_and_hex():
    assert key() == key()
    assert len(key()) == 64 and int(key(), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"params": {"method": "lm", "ratio": 0.5, "seed": 0}},
        {"deps": {"data/prepared": "b" * 32 + ".dir"}},
        {"env": {**ENV, "device": "cuda", "precision": "bf16"}},
        {"env": {**ENV, "torch": "9.9.9"}},
        {"spec": StageSpec("prune", "python -m tasks.prune --fast", SPEC.deps, SPEC.params, ())},
    ],
)
def test_key_changes_with_what_shapes_outputs(change):
    assert key(**change) != key()


def test_undeclared_params_do_not_enter_the_key():
    # `seed` is not declared by SPEC, so changing it must not invalidate the cache
    assert key(params={"method": "lm", "ratio": 0.8, "seed": 7}) == key()


def test_code_closure_follows_imports_through_packages():
    closure = keys.code_closure("tasks.distill")
    assert {"tasks.distill", "tlpipe.distillation.representation", "tlpipe.distillation.seed", "tlpipe.distillation", "tlpipe"} <= set(closure)
    assert not any(name.startswith("runner") for name in closure)  # where results go does not shape them
    assert keys.module_file("numpy") is None  # only project modules are hashed (versions cover the rest)


def test_stage_module_requires_python_m():
    assert SPEC.module == "tasks.prune"
    with pytest.raises(ValueError, match="must run `python -m tasks"):
        StageSpec("x", "bash run.sh", (), {}, ()).module


def test_the_metrics_file_leaves_out_what_varies_by_attempt_at_every_depth():
    from runner.core import of_outputs

    metrics = {"accuracy": 0.9, "wall_time_s": 3.0, "resumed_from_epoch": 2, "images_per_s": 10.0,
               "cost": {"pretrain": {"wall_time_s": 1.0, "images_seen": 5}, "end_to_end": {"wall_time_s": None}}}
    assert of_outputs(metrics) == {"accuracy": 0.9, "cost": {"pretrain": {"images_seen": 5}, "end_to_end": {}}}
