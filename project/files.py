"""The names of what the stages hand each other inside their output folders, in one place (the folders
themselves are dvc.yaml's outs)."""

SOURCE, TARGET = "source", "target"  # prepare: the prepared data sets
CLASSIFIER, BACKBONE = "model", "backbone"  # surrogate, pretrain, distill, finetune: save_pretrained folders
KEPT_INDICES = "kept_indices.npy"  # prune: the kept rows of the prepared source's train split
SELECTION = "selection.json"  # prune and distill: what was kept or chosen, and why
COMPARED, COMPARISON = "compare", "compare.json"  # finetune: the other backbone's model, and its figures
SYNTHETIC = "synthetic"  # distill with krr_st: the synthetic set (its grid beside it, synthetic.png)
