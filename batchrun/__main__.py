"""`python -m batchrun`."""

from .cli import console

console()
