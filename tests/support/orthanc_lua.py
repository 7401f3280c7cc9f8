"""deploy/orthanc/cxr-follow-deletions.lua as a test's Orthanc loads it: the shipped script with the
follower's URL and token set where an operator sets them (the first lines)."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "deploy" / "orthanc" / "cxr-follow-deletions.lua"


def deletion_script(folder: Path, url: str, token: str = "") -> Path:
    """A copy of the script in `folder` posting to `url` with `token`."""
    text = SCRIPT.read_text()
    for name, value in (("FOLLOWER_URL", url), ("TOKEN", token)):
        text, found = re.subn(rf"^local {name} = '[^']*'", f"local {name} = '{value}'", text, flags=re.MULTILINE)
        assert found == 1, f"{SCRIPT} no longer sets {name} on a line of its own"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SCRIPT.name
    path.write_text(text)
    return path
