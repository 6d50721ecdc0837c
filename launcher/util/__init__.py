"""Small leaf helpers every place may use: JSON objects, one-shot output files, quieted warnings."""
