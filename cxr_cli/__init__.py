"""The roof of the project: the `cxr` command line, the demo and the process supervisor.

It stands on every layer below it (the ground cxr/; export, gateway, indexing, training; benchmarks)
and nothing of ours imports it (tests/test_layers.py)."""

from cxr_cli.main import main

__all__ = ["main"]
