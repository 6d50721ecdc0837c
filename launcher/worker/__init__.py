"""Inside each rank: plan.json -> one Run (run.py: setup, train, save); `python -m launcher.worker`."""
