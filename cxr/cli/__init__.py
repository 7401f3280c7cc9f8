"""The top of the project: the `cxr` command line, the demo and the process supervisor.

Everything else in cxr/ is the ground the other parts stand on and imports nothing of ours;
this package may import any part (export, gateway, indexing, training, benchmarks)."""

from cxr.cli.main import main

__all__ = ["main"]
