"""Speed paths: padding-free attention, chunked/fused loss, torch.compile (choice in choice.py, no torch)."""
