"""Keeps every tool offline and quiet, with its state in temporary folders."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_STATE = Path(tempfile.mkdtemp(prefix="tlpipe-tests-"))
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)
for key, value in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PREFECT_HOME": str(_STATE / "prefect"),
    "HF_HOME": str(_STATE / "hf"),
    "MLFLOW_TRACKING_URI": f"sqlite:///{_STATE / 'mlflow.db'}",
    "MPLBACKEND": "Agg",
}.items():
    os.environ[key] = value

# DVC binds its log handlers to sys.stdout/stderr as they are when `dvc` is first imported. Imported
# here, before any test swaps the streams (typer's CliRunner does, then closes them), it logs to the
# real ones, as in a real process.
import dvc  # noqa: E402,F401

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"  # the reference outputs of the papers' code (see its README)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The parity fixtures, kept in the repository so the parity tests run in every clone."""
    if not FIXTURES.is_dir():
        pytest.fail(f"parity fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def parity_cases(fixtures_dir):
    """parity_cases("label_mapping") -> {case id: {field: array}} from `<name>.npz` (keys `<case>__<field>`)."""
    import numpy as np

    def load(name: str) -> dict[str, dict]:
        cases: dict[str, dict] = {}
        with np.load(fixtures_dir / f"{name}.npz") as data:
            for key in data.files:
                case, field = key.split("__", 1)
                cases.setdefault(case, {})[field] = data[key]
        return cases

    return load


@pytest.fixture(scope="session")
def distill_fixture(parity_cases):
    """The SEED and CompRess cases of distill_losses.npz, by case id."""
    return parity_cases("distill_losses")


@pytest.fixture
def edit_code(tmp_path, monkeypatch):
    """edit_code("tlpipe.pruning.early"): from now on the code hashes (stage and memo keys) see that
    module's source edited (a copy with a line added), as after a developer's change; the code that
    runs is unchanged, so a result computed again equals the old one."""
    from runner import keys

    real = keys.module_file
    edited: dict[str, Path] = {}

    def module_file(module: str):
        return edited.get(module) or real(module)

    def edit(module: str) -> Path:
        source = real(module)
        copy = tmp_path / "edited" / f"{module}.py"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(source.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
        edited[module] = copy
        return copy

    monkeypatch.setattr(keys, "module_file", module_file)
    return edit
