"""`python -m batchrun`."""

from .cli import main

main()
