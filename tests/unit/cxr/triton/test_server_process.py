"""Starting Triton: clear errors for a busy port, an empty repository or a missing binary (a real Triton
served from the command line: tests/integration/cxr/test_server_process.py)."""

import socket

import pytest

from cxr.triton import server_process
from cxr.triton.errors import TritonError
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
