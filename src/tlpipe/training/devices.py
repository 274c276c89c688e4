"""What can be known about devices without importing torch (which takes seconds to import).

A run whose stages are all cache hits never computes, so it should not pay for torch just to
learn that it is on a CPU; `tlpipe.training.runtime` asks torch whenever an accelerator is possible.
"""

import sys
from pathlib import Path

# numeric precision of the training loops per device type (tlpipe.training.runtime.device_settings)
PRECISION = {"cuda": "bf16", "mps": "fp32", "cpu": "fp32"}

# device nodes through which torch reaches a GPU on Linux: NVIDIA, AMD ROCm (torch.cuda over HIP),
# and the WSL2 GPU bridge
_GPU_NODES = ("nvidia*", "kfd", "dxg")


def accelerator_possible(dev: Path = Path("/dev"), platform: str = sys.platform) -> bool:
    """False only where torch certainly finds no accelerator: Linux without GPU device nodes.

    macOS may have MPS and other systems are not inspected, so they answer True (ask torch).
    """
    if platform != "linux":
        return True
    return any(any(dev.glob(pattern)) for pattern in _GPU_NODES)
