"""Runtime settings in one frozen dataclass: defaults, then cxr.toml, then CXR_* variables.

The active model is chosen here and nowhere else: `model = "..."` in cxr.toml or CXR_MODEL.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "cxr.toml"
PATH_FIELDS = ("model_repository", "cache_dir", "run_dir", "data_dir", "index_dir")
DEFAULT_MODEL = "cxr-mini"  # trained here, shipped in weights/: works with no download


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    model_repository: Path = Path("model_repository")
    cache_dir: Path = Path(".cache")  # built twins, the Triton backend folder
    run_dir: Path = Path(".run")  # pid files and logs of detached servers
    data_dir: Path = Path("../shared/data")  # sample archives; twins train their tokenizer here
    index_dir: Path = Path("indexes")  # one FAISS index per model: <index_dir>/<model>/
    triton_host: str = "127.0.0.1"  # loopback unless a deployment says otherwise
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 50051
    use_gpu: bool = False  # search FAISS on the GPU when faiss-gpu and a GPU are present

    @property
    def triton_grpc_url(self) -> str:
        return f"{self.triton_host}:{self.triton_grpc_port}"

    @property
    def gateway_address(self) -> str:
        return f"{self.gateway_host}:{self.gateway_port}"

    def index_path(self, model: str) -> Path:
        return self.index_dir / model

    @property
    def triton_http_url(self) -> str:
        return f"{self.triton_host}:{self.triton_http_port}"


def _coerce(field: dataclasses.Field, value):
    if field.type in ("bool", bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if field.type in ("int", int):
        return int(value)
    if field.type in ("Path", Path):
        return Path(value)
    return str(value)


def load_settings(root: Path | None = None, environ: dict | None = None) -> Settings:
    """Settings for a checkout at `root` (default: the working directory)."""
    root = Path.cwd() if root is None else root
    environ = os.environ if environ is None else environ
    values: dict = {}
    config_path = root / CONFIG_FILE
    if config_path.is_file():
        values.update(tomllib.loads(config_path.read_text()).get("cxr", {}))
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{config_path}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
    for name in fields:
        env_name = "CXR_" + name.upper()
        if env_name in environ:
            values[name] = environ[env_name]
    values = {name: _coerce(fields[name], value) for name, value in values.items()}
    for name in PATH_FIELDS:
        if name in values and not values[name].is_absolute():
            values[name] = root / values[name]
    defaults = Settings()
    for name in PATH_FIELDS:
        values.setdefault(name, root / getattr(defaults, name))
    return Settings(**values)


def to_environment(settings: Settings) -> dict[str, str]:
    """CXR_* variables that reproduce `settings` in a child process."""
    values = dataclasses.asdict(settings)
    return {"CXR_" + name.upper(): str(value) for name, value in values.items()}
