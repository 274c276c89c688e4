"""How a stage of several training processes is launched: checked before anything runs."""

import pytest

from runner import ranks
from runner.spec import StageSpec


def test_several_hosts_need_a_rendezvous_before_anything_runs(monkeypatch):
    pretrain = StageSpec("pretrain", "", (), {}, ())
    monkeypatch.delenv("TLPIPE_RDZV_ENDPOINT", raising=False)
    with pytest.raises(ValueError, match=r"params/pretrain.yaml: nnodes=2 needs TLPIPE_RDZV_ENDPOINT=host:port"):
        ranks.check([pretrain], {"pretrain": {"nproc": 1, "nnodes": 2}}, "cpu")
    monkeypatch.setenv("TLPIPE_RDZV_ENDPOINT", "10.0.0.1:29500")
    monkeypatch.setenv("TLPIPE_NODE_RANK", "2")
    with pytest.raises(ValueError, match="TLPIPE_NODE_RANK='2' must be a node rank in 0..1"):
        ranks.check([pretrain], {"pretrain": {"nproc": 1, "nnodes": 2}}, "cpu")
    monkeypatch.setenv("TLPIPE_NODE_RANK", "1")
    assert ranks.launcher_arguments(2, 2) == ["--nnodes=2", "--nproc_per_node=2", "--node_rank=1",
                                             "--master_addr=10.0.0.1", "--master_port=29500"]
    assert ranks.launcher_arguments(2, 1) == ["--standalone", "--nproc_per_node=2"]
    ranks.check([pretrain], {"pretrain": {"nproc": 1, "nnodes": 2}}, "cpu")
