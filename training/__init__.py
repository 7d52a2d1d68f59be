"""Training: datasets → training modes (head, finetune, scratch) → metrics → checkpoint + model card."""
