"""The roof of the project: the `cxr` command line, the demo and the process supervisor.

It stands on every layer below it (the ground cxr/; export, gateway, indexing, training; benchmarks)
and nothing of ours imports it (tests/unit/test_layers.py)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """The `cxr` command: refuses to start on a shadowed package of ours, before importing any of them."""
    from cxr_cli.packages import foreign_packages

    problem = foreign_packages()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 3  # exit_codes.BAD_INPUT, not imported: it stands on cxr, which may be the shadowed one
    from cxr_cli.main import main as run

    return run(argv)


__all__ = ["main"]
