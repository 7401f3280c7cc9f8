"""A real OpenID provider on loopback for the sign-in tests: npm's oidc-provider (OpenID Certified), run
by tests/support/oidc/provider.mjs from the copy `make setup-oidc` installs into .cache/oidc-provider.

Its issuer is http://localhost:PORT while the gateway is opened at 127.0.0.1: the provider and the page
are different sites to the browser, as a hospital's provider and the gateway are, so the cookies'
SameSite rules are tested as they will apply.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxr.processes import free_ports, stop_process

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "oidc" / "provider.mjs"
INSTALL_DIR = ROOT / ".cache" / "oidc-provider"
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ProviderUser:
    username: str
    password: str
    name: str
    roles: tuple[str, ...]


@dataclass(frozen=True)
class ProviderClient:
    client_id: str
    redirect_uris: list[str]
    post_logout_redirect_uris: list[str]
    client_secret: str = ""  # "": a public client
    token_ttl_s: int = 3600


def missing() -> str | None:
    """Why the provider cannot run here (node or npm missing), or None."""
    absent = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} missing: install Node.js 20+ and npm, then `make setup-oidc`" if absent else None


def install() -> None:
    """`make setup-oidc`: npm ci of the pinned oidc-provider into .cache, when not done yet."""
    done = subprocess.run(["make", "-s", "setup-oidc"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not (INSTALL_DIR / ".installed").is_file():
        raise RuntimeError(f"`make setup-oidc` failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


@dataclass
class OidcProvider:
    clients: list[ProviderClient]
    users: list[ProviderUser]
    roles_in_id_token: bool = False
    port: int = field(default_factory=lambda: free_ports(1)[0])
    process: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    @property
    def issuer(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self) -> OidcProvider:
        install()
        shutil.copyfile(SCRIPT, INSTALL_DIR / SCRIPT.name)  # beside its node_modules, so its import resolves
        config = {"issuer": self.issuer, "port": self.port, "rolesInIdToken": self.roles_in_id_token,
                  "clients": [_client(c) for c in self.clients], "users": [asdict(u) for u in self.users]}
        self.process = subprocess.Popen(["node", str(INSTALL_DIR / SCRIPT.name)], cwd=INSTALL_DIR, text=True,
                                        env=dict(os.environ, CXR_OIDC_CONFIG=json.dumps(config)),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        lines: queue.Queue[str | None] = queue.Queue()

        def read():
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=READY_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"the test OpenID provider did not start:\n{''.join(self.output)[-3000:]}")
            if line.startswith("ready "):
                return

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=10)
            self.process = None

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _client(client: ProviderClient) -> dict:
    values = asdict(client)
    if not client.client_secret:
        values.pop("client_secret")
    return values
