"""Data path: registry -> format -> template -> tokenize + mask -> collate."""
