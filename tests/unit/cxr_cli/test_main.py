"""`cxr` itself (cxr_cli.main): `--version` from the one version source, `--help` with the exit statuses docs/cli.md
gives too, and `cxr models --json` (the other --json documents: test_search_commands.py, test_security.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from cxr import __version__
from cxr.settings import to_environment
from cxr_cli.exit_codes import MEANINGS
from support import make_settings

ROOT = Path(__file__).resolve().parents[3]


def _cxr(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    environ.update(env or {}, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "cxr_cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=environ)


def test_version_is_cxr_s_and_the_package_reads_it_from_there():
    done = _cxr("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"cxr-retrieval {__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cxr.__version__"}


def test_help_and_the_command_line_page_give_every_exit_status_as_the_code_does():
    help_text = _cxr("--help").stdout
    page = (ROOT / "docs" / "cli.md").read_text()
    for code, meaning in MEANINGS.items():
        assert f"\n  {code:>3}  {meaning.split(':')[0]}" in help_text, code
        assert f"| `{code}` | {meaning} |" in page, code


def test_models_json_is_one_document_with_every_model_and_triton_down(tmp_path):
    settings = make_settings(tmp_path, tmp_path / "cache")
    done = _cxr("models", "--json", env=to_environment(settings))
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["active"] == settings.model and document["triton"] == {"url": settings.triton_grpc_url,
                                                                           "up": False}
    models = {m["name"]: m for m in document["models"]}
    assert models[settings.model]["active"] and models["siglip-tiny"]["twin"]
    assert all(m["exported"] is None and m["ready"] is None for m in models.values())  # nothing exported, no Triton
    assert set(models["cxr-mini"]) == {"name", "active", "family", "image_size", "embed_dim", "context_length",
                                       "tokenizer", "twin", "exported", "ready", "use"}
