"""`python -m batchrun`."""

from batchrun.cli import console

console()
