"""Backends turn a plan into processes: local (this machine) today; ssh hostfile and SLURM later."""
