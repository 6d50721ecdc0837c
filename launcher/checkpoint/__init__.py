"""Checkpoints: finding them (torch-free) and, offline, consolidating and merging them."""
