"""Fine-tuning on few labels: the penalties, the semi-supervised objective and the adapters of the
methods that train the backbone (`registry.FINETUNING` names them; `training.loops.finetune` runs them):
`regularizers` (L2-SP, BSS), `fixmatch` (FixMatch on the unlabeled target images), `lora` (LoRA
through peft)."""
