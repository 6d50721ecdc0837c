"""`launch ui`: a local web page over the same recipe, plan and run files as the CLI (docs/ui.md)."""
