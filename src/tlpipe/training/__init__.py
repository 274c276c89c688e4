"""Backbones and the loops that train them: checkpoints, devices, precision, data parallelism."""
