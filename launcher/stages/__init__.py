"""Training stages. Each is registered in launcher/registry.py by its torch-free spec module
(<name>_spec.py: recipe rules, data, model head) that names its trainer module (<name>.py:
`build_trainer(plan, args, model, tokenizer, callbacks) -> (Trainer, data summary)`).
Nothing is imported here, so reading a spec imports no torch."""
