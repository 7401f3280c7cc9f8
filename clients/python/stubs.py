"""The client's generated code, made from the protos at build time (setup.py) and never committed.

Into cxr_client/_proto: retrieval_pb2.py (and .pyi) and retrieval_pb2_grpc.py, whose import of its messages
is made relative (protoc writes `from cxr.retrieval.v1 import ...`, which would find the service's own
package, or nothing); and google_rpc.binpb, google.rpc's status and error details as a FileDescriptorSet
that cxr_client reads into a descriptor pool of its own, so that a process that also imports
googleapis-common-protos (of whatever version) is never told of a duplicate definition.

`python stubs.py` writes them into this checkout's cxr_client/_proto, for tests run from the source tree.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

PROTOS = ("cxr/retrieval/v1/retrieval.proto",)
GOOGLE_RPC = ("google/rpc/status.proto", "google/rpc/error_details.proto")
DESCRIPTORS = "google_rpc.binpb"
ABSOLUTE_IMPORT = "from cxr.retrieval.v1 import retrieval_pb2 as"
HERE = Path(__file__).resolve().parent


def proto_root(project: Path) -> Path:
    """The protos: copied into an sdist, else the repository's protos/ two folders up."""
    for root in (project / "protos", project.parents[1] / "protos"):
        if (root / PROTOS[0]).is_file():
            return root
    raise FileNotFoundError(f"no {PROTOS[0]} under {project}/protos or the repository's protos/: build the client "
                            "from a checkout of cxr-retrieval, or from its sdist")


def _protoc(*arguments: str) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    code = protoc.main(["protoc", *arguments, f"-I{well_known}"])
    if code != 0:
        raise RuntimeError(f"protoc {' '.join(arguments)} failed ({code}): see its message above")


def _googleapis_root() -> Path:
    """The folder holding google/rpc/*.proto: googleapis-common-protos's installation."""
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    if spec is None or spec.origin is None:
        raise RuntimeError("googleapis-common-protos is missing: it is a build requirement (pyproject.toml)")
    return Path(spec.origin).parents[2]


def _relative_import(grpc_module: Path) -> None:
    text = grpc_module.read_text()
    if ABSOLUTE_IMPORT not in text:
        raise RuntimeError(f"{grpc_module.name} does not import its messages as expected ({ABSOLUTE_IMPORT!r}): "
                           "grpcio-tools changed what it writes; update stubs.py")
    grpc_module.write_text(text.replace(ABSOLUTE_IMPORT, "from . import retrieval_pb2 as"))


def generate(out_dir: Path, root: Path) -> list[Path]:
    """Write the stubs and the google.rpc descriptors into `out_dir` (a package: its __init__.py is kept)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        _protoc(f"-I{root}", f"--python_out={work}", f"--pyi_out={work}", f"--grpc_python_out={work}",
                *(str(root / proto) for proto in PROTOS))
        _protoc(f"-I{_googleapis_root()}", "--include_imports", f"--descriptor_set_out={work / DESCRIPTORS}",
                *GOOGLE_RPC)
        made = sorted(work.rglob("*_pb2*.py*")) + [work / DESCRIPTORS]
        written = []
        for path in made:
            target = out_dir / path.name
            shutil.copyfile(path, target)
            written.append(target)
    _relative_import(out_dir / "retrieval_pb2_grpc.py")
    return written


if __name__ == "__main__":
    for path in generate(HERE / "cxr_client" / "_proto", proto_root(HERE)):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path, file=sys.stderr)
