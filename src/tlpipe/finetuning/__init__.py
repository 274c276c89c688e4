"""Fine-tuning on few labels: the regularizers of the methods that train the backbone
(`registry.FINETUNING` names them; `training.loops.finetune` runs them)."""
