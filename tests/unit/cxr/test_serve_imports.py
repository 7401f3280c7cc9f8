"""The serving side (gateway, the indexer's client, Triton's python-backend model) needs no torch and no
transformers: they are export and training dependencies, ~600 MB of RSS the gateway must not carry."""

import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cxr.registry import get_model
from export.repository import export_model
from support import make_settings

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "transformers")
# One model per tokenizer backend: WordPiece and CLIP BPE in tokenizers, SigLIP's SentencePiece.
MODELS = ("cxr-mini", "pubmed_clip-tiny", "siglip-tiny")
SERVE_EXTRAS = ("serve", "milvus")  # what deploy/gateway.Dockerfile installs

# Imports every serving entry point, loads the catalog (which builds each model's tokenizer),
# tokenises, and reports which heavy packages ended up imported.
CHILD = """
import json, sys, types
from pathlib import Path
sys.modules["triton_python_backend_utils"] = types.ModuleType("triton_python_backend_utils")  # Triton's own
import gateway.server, indexing.build, indexing.dicomweb_build, export.triton_python_model
from cxr.catalog import load_catalog
catalog = load_catalog(Path(sys.argv[1]))
shapes = {name: {k: list(v.shape) for k, v in model.tokenizer(["Small left pleural effusion."]).items()}
          for name, model in catalog.items()}
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))
print(json.dumps({"shapes": shapes, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory, cache_dir):
    settings = make_settings(tmp_path_factory.mktemp("serve-imports"), cache_dir)
    for name in MODELS:
        export_model(get_model(name), settings, log=lambda *_: None)
    return settings.model_repository


def test_gateway_catalog_and_tokenizers_import_no_torch_nor_transformers(repository):
    result = subprocess.run([sys.executable, "-c", CHILD, str(repository), *HEAVY], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["heavy"] == [], f"the serving side imported {report['heavy']}"
    assert sorted(report["shapes"]) == sorted(MODELS)
    for name, shapes in report["shapes"].items():
        assert set(shapes) == set(get_model(name).text_inputs)


def _closure(requirements: list[Requirement]) -> dict[str, str | None]:
    """Every distribution an install of `requirements` pulls in -> the one that required it."""
    parent, extras_seen, todo = {}, {}, [(r, None) for r in requirements]
    while todo:
        requirement, required_by = todo.pop()
        name = canonicalize_name(requirement.name)
        new_extras = set(requirement.extras) - extras_seen.get(name, set())
        if name in extras_seen and not new_extras:
            continue
        extras_seen.setdefault(name, set()).update(requirement.extras)
        parent.setdefault(name, required_by)
        try:
            subs = [Requirement(s) for s in requires(requirement.name) or []]
        except PackageNotFoundError:
            continue  # not installed here, so not a torch or transformers wheel either
        for sub in subs:
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in requirement.extras or {""}):
                todo.append((sub, name))
    return parent


def test_the_serve_install_pulls_in_no_torch_nor_transformers():
    """Walks the installed packages' metadata from pyproject's base and serve dependencies (offline, fast)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [d for extra in SERVE_EXTRAS for d in project["optional-dependencies"][extra]]
    parent = _closure([Requirement(r) for r in listed])
    for heavy in HEAVY:
        chain = [heavy]
        while heavy in parent and parent.get(chain[-1]):
            chain.append(parent[chain[-1]])
        assert heavy not in parent, f"the serve install pulls in {heavy}: {' <- '.join(chain)} <- pyproject.toml"
