"""The backbone (LLaVA classes from transformers), the stage-0 dense base every method starts from, and LoRA."""
