"""The red-team suite: the gateway tried as a hostile client and a careless operator would, on loopback.

Two configurations, as the hardening issue found the defects in:
- A (`open_gateway`): the defaults, plaintext, auth none, HTTP API on;
- B (`secured_gateway`): mutual TLS, `auth = "token"` (JWTs and API keys), the audit log on, HTTP API on.
Both front the session's real Triton and NIH index (tests/conftest.py). The rate limit is off in both so
that one module's bursts do not refuse another's calls; tests/integration/redteam/test_admission.py starts its own
gateways with the limits it tries.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from cxr.dev_pki import dev_security
from support import GATEWAY_MODEL
from support.targets import running


@pytest.fixture(scope="session")
def open_gateway(served, nih_index):
    """Configuration A: defaults, plaintext, auth none, the HTTP API on."""
    settings = replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0)
    with running(settings) as target:
        yield target


@pytest.fixture(scope="session")
def secured_gateway(served, nih_index, tmp_path_factory):
    """Configuration B: mutual TLS, tokens with every scope for the client, the audit log, the HTTP API on."""
    root = tmp_path_factory.mktemp("redteam-secured")
    settings = dev_security(replace(served, model=GATEWAY_MODEL, rate_limit_per_s=0), root / "pki", "red-team",
                            ["search", "studies", "admin"], audit_log=root / "audit" / "audit.log")
    with running(settings) as target:
        yield target
