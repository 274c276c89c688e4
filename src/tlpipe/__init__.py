"""tlpipe: target-aware source pruning, pretraining, distillation and fine-tuning for transfer learning.

The library is pure: it depends on torch, transformers, datasets, numpy, pandas, scipy and POT (optimal
transport) only, never on the orchestration, versioning or tracking tools. Those live in `runner/` and `flows/`; the stages that
call the library are in `tasks/`.
"""

__version__ = "0.1.0"
