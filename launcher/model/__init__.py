"""The model's files and facts: hub, builtin tiny model, shapes, module names, dtypes. Torch-free at import."""
