"""`python -m launcher.worker`: every rank's entry point (the engine starts it)."""

from launcher.worker.main import main

main()
