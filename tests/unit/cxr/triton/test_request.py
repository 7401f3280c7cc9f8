"""Client connection settings: one per Triton endpoint, every one with the deployment's TLS files."""

from pathlib import Path

from cxr.settings import Settings
from cxr.triton.request import connection, connections


def test_the_default_endpoint_is_triton_host_and_grpc_port():
    assert connection(Settings(triton_host="10.0.0.5", triton_grpc_port=9001)) == {"url": "10.0.0.5:9001"}


def test_each_endpoint_gets_its_url_and_the_shared_tls_files():
    settings = Settings(triton_urls=("a:8001", "b:8001"), triton_tls_ca=Path("ca.pem"),
                        triton_tls_cert=Path("gw.pem"), triton_tls_key=Path("gw.key"))
    made = [connection(settings, url) for url in settings.triton_endpoints]
    assert [c["url"] for c in made] == ["a:8001", "b:8001"]
    assert all(c["ssl"] and (c["root_certificates"], c["certificate_chain"], c["private_key"]) ==
               ("ca.pem", "gw.pem", "gw.key") for c in made)


def test_connections_are_one_per_endpoint_of_the_settings():
    assert [c["url"] for c in connections(Settings(triton_urls=("a:8001", "b:8001")))] == ["a:8001", "b:8001"]
    assert connections(Settings(triton_host="h", triton_grpc_port=1)) == [{"url": "h:1"}]
