"""LLM fine-tuning launcher: one YAML recipe -> a planned, distributed training run."""
