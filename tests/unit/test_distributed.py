"""Data-parallel training through PyTorch's own launcher (`torch.distributed.run`, gloo on CPU): two
processes, or two "nodes" of one process on 127.0.0.1, train what one process trains at the same
global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, *launcher: str) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, *launcher, str(SCRIPT), str(out)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]


def finish(processes: list[subprocess.Popen], out: Path) -> tuple[dict, dict]:
    for p in processes:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output[-3000:]
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors")), json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return finish(launch(out), out)


def close(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    (weights_a, metrics_a), (weights_b, metrics_b) = a, b
    assert (metrics_a["world"], metrics_b["world"]) == (1, 2)
    assert metrics_a["images_seen"] == metrics_b["images_seen"] == 2 * 64
    np.testing.assert_allclose(metrics_a["losses"], metrics_b["losses"], rtol=1e-5)
    for name, value in weights_a.items():
        torch.testing.assert_close(value, weights_b[name], rtol=1e-4, atol=1e-5)


def test_two_processes_train_what_one_trains(tmp_path, one_process):
    close(one_process, finish(launch(tmp_path, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", "2"), tmp_path))


def test_two_nodes_of_one_process_train_what_one_trains(tmp_path, one_process):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [p for rank in (0, 1) for p in launch(
        tmp_path, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
        "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "test")]
    close(one_process, finish(nodes, tmp_path))


def train(out: Path) -> None:
    """In each process: a LayerNorm net (ConvNeXt: no batch statistics, so sharing a batch changes
    nothing but the order of sums), 2 epochs of 4 steps of 16 images."""
    from safetensors.torch import save_file

    from tlpipe.training import distributed
    from tlpipe.training.models import Classifier, build_backbone
    from tlpipe.training.loops import train_classifier

    launched = "WORLD_SIZE" in os.environ
    ranks, device = distributed.start("cpu") if launched else (distributed.current(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(64, 1, 16, 16), dtype=np.uint8)
    labels = (images[:, 0, :8].mean((1, 2)) > images[:, 0, 8:].mean((1, 2))).astype(np.int64)
    torch.manual_seed(1)
    model = Classifier(build_backbone(arch="convnext", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), 2)
    losses = []
    metrics = train_classifier(model, images, labels, epochs=2, batch_size=16, lr=3e-3, weight_decay=0.01, seed=5,
                               device=device, on_metrics=lambda epoch, m: losses.append(m["train_loss"]))
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "metrics.json").write_text(json.dumps({"losses": losses, "images_seen": metrics["images_seen"],
                                                      "world": ranks.world}))
    distributed.stop()


if __name__ == "__main__":
    train(Path(sys.argv[1]))
