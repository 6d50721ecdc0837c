"""The recipe: YAML text, the schema, validation, user DeepSpeed JSON, LLaMA-Factory import. Torch-free."""
