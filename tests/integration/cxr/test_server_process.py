"""A real Triton: `cxr serve --detach` (Triton and gateway) / `cxr models` / `cxr stop` work from the
command line, Triton's admin APIs need the key serve wrote, and the gateway reaches a Triton that wants
mutual TLS."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from cxr.registry import get_model
from cxr.settings import to_environment
from cxr.triton import server_process
from export.repository import export_model
from support import make_settings


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
        assert again.returncode == 3 and "already in use" in again.stderr  # bad input: a port to change
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
    from cxr.dev_pki import write_dev_pki
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
