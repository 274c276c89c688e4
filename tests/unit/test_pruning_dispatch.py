import numpy as np
import pytest

from tlpipe import pruning, registry
from tlpipe.pruning import CLASS_METHODS, SAMPLE_METHODS, select_classes, select_samples

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(12, 6)).astype(np.float32)
TARGET_LABELS = RNG.integers(0, 3, size=12)
TARGET_FEATURES = RNG.normal(size=(12, 4))
SOURCE_FEATURES = RNG.normal(size=(30, 4))
SOURCE_LABELS = np.arange(30) % 5
NORMS = [RNG.random(30), RNG.random(30)]
SOURCE_LOGITS = [RNG.normal(size=(30, 5)) for _ in range(2)]


def test_method_lists_come_from_the_registry():
    assert CLASS_METHODS == ("lm", "lm_bottom", "lm_soft", "lm_balanced", "random", "fm")
    assert SAMPLE_METHODS == ("random_samples", "fm_samples", "el2n", "grand", "moderate")
    assert set(CLASS_METHODS) | set(SAMPLE_METHODS) == set(registry.PRUNING)


CLASS_CALLS = {
    "lm": (dict(logits=LOGITS), lambda: pruning.select_classes_label_mapping(LOGITS, ratio=0.5)),
    "lm_bottom": (dict(logits=LOGITS), lambda: pruning.select_classes_least_voted(LOGITS, ratio=0.5)),
    "lm_soft": (dict(logits=LOGITS), lambda: pruning.select_classes_soft_votes(LOGITS, ratio=0.5)),
    "lm_balanced": (dict(logits=LOGITS, target_labels=TARGET_LABELS),
                    lambda: pruning.select_classes_balanced(LOGITS, TARGET_LABELS, ratio=0.5)),
    "random": (dict(num_classes=6), lambda: pruning.select_classes_random(6, ratio=0.5, seed=4)),
    "fm": (dict(target_features=TARGET_FEATURES, source_features=SOURCE_FEATURES, num_clusters=5),
           lambda: pruning.select_groups_feature_mapping(TARGET_FEATURES, SOURCE_FEATURES, num_clusters=5, ratio=0.5, seed=4)),
}


@pytest.mark.parametrize("method", CLASS_METHODS)
def test_select_classes_dispatches(method):
    kwargs, direct = CLASS_CALLS[method]
    got, expected = select_classes(method, ratio=0.5, seed=4, **kwargs), direct()
    assert got.method == method
    np.testing.assert_array_equal(got.kept, expected.kept)
    np.testing.assert_array_equal(got.ranking, expected.ranking)


def test_select_classes_fm_with_source_labels():
    fm = select_classes("fm", ratio=0.4, seed=0, target_features=TARGET_FEATURES,
                        source_features=SOURCE_FEATURES, source_labels=SOURCE_LABELS)
    assert fm.num_classes == 5 and fm.num_kept == 3
    np.testing.assert_array_equal(fm.kept_samples, np.flatnonzero(np.isin(SOURCE_LABELS, fm.kept)))


def test_unknown_class_method_lists_every_method():
    with pytest.raises(ValueError, match="method must be one of") as err:
        select_classes("topk", ratio=0.5, seed=0, logits=LOGITS)
    assert all(m in str(err.value) for m in CLASS_METHODS)


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("lm_bottom", {}, "logits"),
        ("lm_soft", {}, "logits"),
        ("lm_balanced", {"logits": LOGITS}, "target_labels"),
        ("fm", {"target_features": TARGET_FEATURES}, "source_features"),
        ("fm", {"target_features": TARGET_FEATURES, "source_features": SOURCE_FEATURES}, "source_labels"),
    ],
)
def test_select_classes_missing_inputs(method, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_classes(method, ratio=0.5, seed=0, **kwargs)


SAMPLE_CALLS = {
    "random_samples": (dict(num_samples=30), lambda: pruning.select_samples_random(30, ratio=0.5, seed=4)),
    "fm_samples": (dict(target_features=TARGET_FEATURES, source_features=SOURCE_FEATURES),
                   lambda: pruning.select_samples_feature_mapping(TARGET_FEATURES, SOURCE_FEATURES, ratio=0.5)),
    "el2n": (dict(logits_per_model=SOURCE_LOGITS, source_labels=SOURCE_LABELS),
             lambda: pruning.select_samples_el2n(SOURCE_LOGITS, SOURCE_LABELS, ratio=0.5)),
    "grand": (dict(grad_norms_per_model=NORMS), lambda: pruning.select_samples_grand(NORMS, ratio=0.5)),
    "moderate": (dict(source_features=SOURCE_FEATURES, source_labels=SOURCE_LABELS),
                 lambda: pruning.select_samples_moderate(SOURCE_FEATURES, SOURCE_LABELS, ratio=0.5)),
}


@pytest.mark.parametrize("method", SAMPLE_METHODS)
def test_select_samples_dispatches(method):
    kwargs, direct = SAMPLE_CALLS[method]
    got, expected = select_samples(method, ratio=0.5, seed=4, **kwargs), direct()
    assert got.method == method and got.num_kept == 15
    np.testing.assert_array_equal(got.kept, expected.kept)


@pytest.mark.parametrize("method", SAMPLE_METHODS)
def test_select_samples_ratio_zero_keeps_all(method):
    kwargs, _ = SAMPLE_CALLS[method]
    np.testing.assert_array_equal(select_samples(method, ratio=0.0, **kwargs).kept, np.arange(30))


@pytest.mark.parametrize("method", SAMPLE_METHODS)
def test_select_samples_bad_ratio(method):
    kwargs, _ = SAMPLE_CALLS[method]
    with pytest.raises(ValueError, match="ratio"):
        select_samples(method, ratio=1.0, **kwargs)


def test_unknown_sample_method_and_missing_inputs():
    with pytest.raises(ValueError, match="method must be one of") as err:
        select_samples("lm", ratio=0.5)
    assert all(m in str(err.value) for m in SAMPLE_METHODS)
    with pytest.raises(ValueError, match="num_samples"):
        select_samples("random_samples", ratio=0.5)
    with pytest.raises(ValueError, match="source_labels"):
        select_samples("el2n", ratio=0.5, logits_per_model=SOURCE_LOGITS)
    with pytest.raises(ValueError, match="grad_norms_per_model"):
        select_samples("grand", ratio=0.5)


ALL_INPUTS = {"logits": LOGITS, "target_labels": TARGET_LABELS, "target_features": TARGET_FEATURES,
              "source_features": SOURCE_FEATURES, "grad_norms_per_model": NORMS,
              "el2n_norms_per_model": [pruning.el2n_norms(z, SOURCE_LABELS) for z in SOURCE_LOGITS]}


@pytest.mark.parametrize("method", list(registry.PRUNING))
def test_select_reads_what_the_registry_says_a_method_needs(method):
    """The prune stage computes exactly `needs` (plus the source's labels and sizes): that must suffice."""
    needed = {name: ALL_INPUTS[name] for name in registry.PRUNING[method].needs}
    base = ({"num_classes": 6, "num_clusters": 5} if method in CLASS_METHODS
            else {"num_samples": 30, "source_labels": SOURCE_LABELS})
    got = pruning.select(method, ratio=0.5, seed=4, **needed, **base)
    kwargs, direct = (CLASS_CALLS if method in CLASS_METHODS else SAMPLE_CALLS)[method]
    np.testing.assert_array_equal(got.kept, direct().kept)
    for name in needed:  # and every input it names is needed
        with pytest.raises(ValueError, match=name):
            pruning.select(method, ratio=0.5, seed=4, **{k: v for k, v in needed.items() if k != name}, **base)


@pytest.mark.parametrize("method", list(registry.PRUNING))
def test_each_method_is_one_registry_entry_whose_code_enters_the_prune_key(method):
    """`impl` names a function of tlpipe.pruning.methods; that module is in the prune stage's code
    closure, so editing a method's implementation gives prune a new key like any other code."""
    from runner.keys import code_closure

    impl = registry.PRUNING[method].impl
    assert callable(registry.load(impl))
    assert impl.partition(":")[0] in code_closure("tasks.prune")
