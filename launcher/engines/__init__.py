"""Training engines, one torch-free spec module each (registered in launcher/registry.py ENGINES): how the
ranks shard and step, what the planner counts, which method combinations they refuse, how the worker sets
them up. The worker-side parts they name are imported only inside a rank."""
