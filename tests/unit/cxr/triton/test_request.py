"""Client connection settings: one per Triton endpoint, every one with the deployment's TLS files."""

from pathlib import Path

import pytest

from cxr.settings import Settings
from cxr.triton.errors import TritonTlsFileError
from cxr.triton.request import connection, connections


def test_the_default_endpoint_is_triton_host_and_grpc_port():
    assert connection(Settings(triton_host="10.0.0.5", triton_grpc_port=9001)) == {"url": "10.0.0.5:9001"}


def _tls_files(folder: Path) -> dict:
    files = {"triton_tls_ca": folder / "ca.pem", "triton_tls_cert": folder / "gw.pem",
             "triton_tls_key": folder / "gw.key"}
    for path in files.values():
        path.write_text("PEM")
    return files


def test_each_endpoint_gets_its_url_and_the_shared_tls_files(tmp_path):
    files = _tls_files(tmp_path)
    settings = Settings(triton_urls=("a:8001", "b:8001"), **files)
    made = [connection(settings, url) for url in settings.triton_endpoints]
    assert [c["url"] for c in made] == ["a:8001", "b:8001"]
    assert all(c["ssl"] and (c["root_certificates"], c["certificate_chain"], c["private_key"]) ==
               tuple(str(p) for p in files.values()) for c in made)


@pytest.mark.parametrize("name", ["triton_tls_ca", "triton_tls_cert", "triton_tls_key"])
def test_a_tls_file_that_is_not_there_is_named_by_its_setting(tmp_path, name):
    files = _tls_files(tmp_path)
    files[name].unlink()
    with pytest.raises(TritonTlsFileError, match=f"{name} = {files[name]}: no such file; point {name} "
                                                 f"\\(CXR_{name.upper()}\\)"):
        connection(Settings(**files))


def test_connections_are_one_per_endpoint_of_the_settings():
    assert [c["url"] for c in connections(Settings(triton_urls=("a:8001", "b:8001")))] == ["a:8001", "b:8001"]
    assert connections(Settings(triton_host="h", triton_grpc_port=1)) == [{"url": "h:1"}]
