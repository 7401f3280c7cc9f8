"""Starting Triton: clear errors for a busy port, an empty repository or a missing binary;
`cxr serve --detach` (Triton and gateway) / `cxr models` / `cxr stop` work from the command line."""

import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from cxr.registry import get_model
from cxr.settings import to_environment
from cxr.triton import server_process
from cxr.triton.errors import TritonError
from export.repository import export_model
from support import make_settings


def test_empty_repository_is_refused_with_the_export_command(tmp_path, cache_dir):
    settings = make_settings(tmp_path, cache_dir)
    with pytest.raises(TritonError, match="make export MODEL="):
        server_process.start(settings)


def test_a_busy_port_is_named_with_the_variable_that_moves_it(tmp_path, cache_dir):
    settings = make_settings(tmp_path, cache_dir)
    (settings.model_repository / "m").mkdir(parents=True)
    (settings.model_repository / "m" / "config.pbtxt").write_text('name: "m"')
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings.triton_grpc_port))
        busy.listen()
        with pytest.raises(TritonError, match=f"{settings.triton_grpc_port}.*CXR_TRITON_GRPC_PORT"):
            server_process.start(settings)


def test_a_missing_binary_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(server_process, "pytriton_dir", lambda: tmp_path)
    with pytest.raises(TritonError, match="make setup"):
        server_process.binary()


def _cxr(args, settings, **kwargs):
    env = dict(os.environ, **to_environment(replace(settings, model="siglip-tiny")))
    return subprocess.run([sys.executable, "-m", "cxr_cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)


@pytest.mark.triton
def test_serve_detached_models_and_stop(tmp_path, cache_dir):
    settings = make_settings(tmp_path, cache_dir)
    export_model(get_model("siglip-tiny"), settings, log=lambda *_: None)
    before = _cxr(["models"], settings)
    assert "not running" in before.stdout
    served = _cxr(["serve", "--detach"], settings)
    try:
        assert served.returncode == 0, served.stderr
        assert "Triton ready" in served.stdout
        assert f"gateway on {settings.gateway_address}: NOT_SERVING" in served.stdout  # no index yet
        listing = _cxr(["models"], settings).stdout
        row = next(line for line in listing.splitlines() if " siglip-tiny " in line)
        assert row.startswith("*") and "yes (fp32, local)" in row and "ready" in row
        again = _cxr(["serve", "--detach"], settings)
        assert again.returncode == 2 and "already in use" in again.stderr
    finally:
        stopped = _cxr(["stop"], settings)
    assert "stopped gateway and triton" in stopped.stdout
    assert "not running" in _cxr(["models"], settings).stdout


@pytest.mark.triton
def test_tritons_admin_apis_need_the_key_that_serve_wrote(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from cxr.triton.request import admin_headers, connection

    client = grpcclient.InferenceServerClient(**connection(served))
    try:
        for call in (client.get_model_repository_index, lambda: client.unload_model("cxr-mini_image"),
                     lambda: client.get_inference_statistics("cxr-mini_image")):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        assert client.get_model_repository_index(headers=admin_headers(served.triton_admin_key_file)).models
        assert client.is_model_ready("cxr-mini_image")  # health and inference stay open to loopback clients
        assert served.triton_admin_key_file.stat().st_mode & 0o077 == 0
    finally:
        client.close()


@pytest.mark.triton
def test_the_gateway_reaches_a_triton_that_wants_mutual_tls(tmp_path, cache_dir):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from cxr import archives
    from cxr.catalog import ExportedModel
    from cxr.client import RetrievalClient
    from cxr.processes import stop_process
    from gateway.dev_pki import write_dev_pki
    from indexing.build import BuildOptions, build_index
    from support import DATA_DIR, BackgroundGateway

    pki = tmp_path / "pki"
    write_dev_pki(pki)
    settings = replace(make_settings(tmp_path, cache_dir), model="siglip-tiny", triton_tls_ca=pki / "ca.pem",
                       triton_tls_cert=pki / "client.pem", triton_tls_key=pki / "client.key")
    export_model(get_model("siglip-tiny"), settings, log=lambda *_: None)
    tls = server_process.TritonTls(pki / "server.pem", pki / "server.key", pki / "ca.pem")
    triton, log_file = server_process.start(settings, tls=tls)
    try:
        server_process.wait_ready(settings, ["siglip-tiny_image", "siglip-tiny_text"], triton, 120, log_file)
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(settings.triton_grpc_url).is_server_ready(client_timeout=5)
        records = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")[:20]
        build_index(records, ExportedModel.load(settings.model_repository, "siglip-tiny"), settings,
                    settings.index_path("siglip-tiny"), BuildOptions(progress=False, workers=1))
        gateway = BackgroundGateway(settings)
        try:
            with RetrievalClient(gateway.address) as client:
                assert len(client.search_text("effusion", top_k=3).hits) == 3
        finally:
            gateway.stop()
    finally:
        stop_process(triton)
