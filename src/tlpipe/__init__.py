"""tlpipe: target-aware source pruning, pretraining, distillation and fine-tuning for transfer learning.

The library is pure: it depends on torch, transformers, datasets, numpy and pandas only, never on
the orchestration, versioning or tracking tools. Those live in `tasks/` and `flows/`.
"""

__version__ = "0.1.0"
