import pytest

from tlpipe.training import devices, runtime


@pytest.mark.parametrize("nodes, expected", [
    ((), False),
    (("null", "tty0"), False),
    (("nvidia0", "nvidiactl"), True),
    (("kfd",), True),
    (("dxg",), True),
])
def test_accelerator_possible_on_linux_follows_gpu_device_nodes(tmp_path, nodes, expected):
    for node in nodes:
        (tmp_path / node).touch()
    assert devices.accelerator_possible(tmp_path, platform="linux") is expected


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_systems_always_ask_torch(tmp_path, platform):
    assert devices.accelerator_possible(tmp_path, platform=platform)


def test_the_shortcut_agrees_with_torch_here():
    import torch

    if not devices.accelerator_possible():
        assert not torch.cuda.is_available() and runtime.resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("device_type", ["cpu", "cuda", "mps"])
def test_precision_table_is_the_one_the_loops_use(device_type):
    assert runtime.device_settings(device_type)["precision"] == devices.PRECISION[device_type]


def test_a_cpu_device_name_does_not_import_torch():
    import subprocess
    import sys

    code = ("import os, sys; os.environ['TLPIPE_DEVICE'] = 'cpu'; from runner import keys; "
            "print(keys.device_name(), keys.run_environment('cpu')['precision'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["cpu", "fp32", "False"]
