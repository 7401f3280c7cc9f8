"""A Milvus nobody listens for is StoreUnavailableError, naming the URI and never the token (no server
started: the milvus store on Milvus Lite is tests/integration/cxr/test_milvus_store.py)."""

import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")

from cxr.processes import free_ports  # noqa: E402
from cxr.store.errors import StoreUnavailableError  # noqa: E402
from cxr.store.milvus.backend import MilvusBackend  # noqa: E402

MODEL = "m-1"


def test_an_unreachable_milvus_is_unavailable_naming_the_uri_not_the_token():
    (port,) = free_ports(1)
    backend = MilvusBackend(f"http://127.0.0.1:{port}", token="cxr:s3cret-token")
    for call in (lambda: backend.version(MODEL), lambda: backend.open(MODEL)):
        with pytest.raises(StoreUnavailableError, match=rf"Milvus at http://127.0.0.1:{port} is unreachable") as err:
            call()
        assert "s3cret" not in str(err.value) and "start it" in str(err.value)
    backend = MilvusBackend(f"http://cxr:s3cret-token@127.0.0.1:{port}")
    assert "s3cret" not in backend.where(MODEL)
    with pytest.raises(StoreUnavailableError) as err:
        backend.version(MODEL)
    assert "s3cret" not in str(err.value)
