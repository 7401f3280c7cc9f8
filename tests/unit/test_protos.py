"""The public proto: buf's lint passes (protos/buf.yaml says which rules are excepted and why), nothing of the
proto as last released (protos/released) breaks, and it names its package for Go, Java and C#. The buf checks run
the buf that `make setup-buf` installs from npm (@bufbuild/buf), and skip with the reason without it."""

import shutil
import subprocess
from pathlib import Path

import pytest

from cxr.retrieval.v1 import retrieval_pb2 as pb

ROOT = Path(__file__).parents[2]
BUF = ROOT / ".cache" / "npm" / "node_modules" / ".bin" / "buf"
PROTO = Path("cxr/retrieval/v1/retrieval.proto")


def _buf(*arguments: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    buf = str(BUF) if BUF.exists() else shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed: `make setup-buf` installs it from npm (@bufbuild/buf)")
    return subprocess.run([buf, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    done = _buf("lint", "protos")
    assert done.returncode == 0, done.stdout + done.stderr


def test_nothing_of_the_released_proto_breaks():
    done = _buf("breaking", "protos", "--against", "protos/released")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_breaking_check_would_catch_a_changed_field(tmp_path):
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    proto = tmp_path / "protos" / PROTO
    text = proto.read_text()
    assert "  int32 top_k = 2;" in text
    proto.write_text(text.replace("  int32 top_k = 2;", "  int64 top_k = 2;", 1))
    done = _buf("breaking", "protos", "--against", "protos/released", cwd=tmp_path)
    assert done.returncode != 0 and 'changed type from "int32" to "int64"' in done.stdout


def test_the_proto_names_its_package_for_other_languages():
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package.endswith("/cxr/retrieval/v1;retrievalv1")
    assert options.java_package == "cxr.retrieval.v1" and options.java_multiple_files
    assert options.csharp_namespace == "Cxr.Retrieval.V1"
