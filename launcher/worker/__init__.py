"""Inside each rank: plan.json -> model, method, data, trainer; `python -m launcher.worker`."""
