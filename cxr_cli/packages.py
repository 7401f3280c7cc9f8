"""Our top-level packages, and whether the ones Python would import are ours.

The project installs short top-level names (`export`, `gateway`, `indexing`, `training`) so that the
folders the design shows are the packages code imports. Another distribution, or a folder of that
name in the working directory, can shadow one; the command then fails on an unrelated import deep
inside. `foreign_packages` finds that before anything is imported and names the culprit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

OURS = ("cxr", "export", "gateway", "indexing", "training")
HOME = Path(__file__).resolve().parents[1]  # the checkout (editable install) or site-packages (wheel)


def foreign_packages() -> str | None:
    """None when every package of ours resolves beside this one; else what shadows which, and the remedy."""
    for name in OURS:
        spec = importlib.util.find_spec(name)
        where = Path(next(iter(spec.submodule_search_locations or ()), "")) if spec else None
        if where is None or where.resolve().parent != HOME:
            found = f"comes from {where}" if where else "cannot be found"
            return (f"the package `{name}` {found}, not from cxr-retrieval at {HOME}: another distribution or a "
                    f"folder in the working directory shadows it. Run `cxr` from its own virtual environment "
                    f"(`make setup`) and outside folders named {', '.join(OURS)}")
    return None
