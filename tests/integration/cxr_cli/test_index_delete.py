"""`cxr index delete` and `cxr index compact` through the real FAISS backend, with a real gateway (and
Triton) serving the index meanwhile: the CLI's deletion is committed at once, and the gateway stops
returning it within index_changes_poll_s without being told; compacting folds the commits and changes
nothing a search sees; a second deletion of the same study fails NOT_FOUND with its remedy."""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import replace

import grpc
import pytest

from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import to_environment
from cxr_cli.main import main
from support import GATEWAY_MODEL, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = GATEWAY_MODEL
SLACK_S = 1.0  # over index_changes_poll_s: a loaded CI machine's scheduling


@pytest.fixture
def gateway(served, nih_index, tmp_path, monkeypatch):
    """A gateway on a copy of the session's NIH index, and the CLI's settings pointing at that copy."""
    shutil.copytree(nih_index, tmp_path / "indexes" / MODEL)
    settings = replace(served, model=MODEL, index_dir=tmp_path / "indexes", rate_limit_per_s=0)
    monkeypatch.chdir(tmp_path)
    for name, value in to_environment(settings).items():
        monkeypatch.setenv(name, value)
    background = BackgroundGateway(settings)
    try:
        with grpc.insecure_channel(background.address) as channel:
            yield pb_grpc.RetrievalStub(channel), settings
    finally:
        background.stop()


def _hits(stub) -> list:
    return list(stub.SearchByText(pb.SearchByTextRequest(text="pleural effusion", top_k=1000), timeout=60).hits)


def _gone_within(stub, seconds: float, study: str, image: str) -> float:
    """Seconds until no search returns the study or the image; fails after `seconds`."""
    started = time.monotonic()
    while True:
        hits = _hits(stub)
        if study not in {h.study_uid for h in hits} and image not in {h.image_id for h in hits}:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, "the gateway still returns what the CLI deleted"
        time.sleep(0.02)


def test_the_cli_deletes_and_compacts_while_the_gateway_serves(gateway, capsys):
    stub, settings = gateway
    hits = _hits(stub)
    study, image = hits[0].study_uid, next(h.image_id for h in hits if h.study_uid != hits[0].study_uid)

    assert main(["index", "delete", "--study", study]) == 0
    assert main(["index", "delete", "--image", image, "--model", MODEL]) == 0
    out = capsys.readouterr().out
    generations = [int(g) for g in re.findall(r"\(generation (\d+)\)", out)]
    assert f"deleted 1 image from the {MODEL} index" in out and len(generations) == 2
    assert 1 <= generations[0] < generations[1]
    _gone_within(stub, settings.index_changes_poll_s + SLACK_S, study, image)
    assert len(_hits(stub)) == len(hits) - 2  # NIH: one image per study

    assert main(["index", "delete", "--study", study]) == 4  # not found
    assert "nothing indexed under that UID; already deleted or never indexed" in capsys.readouterr().err

    assert main(["index", "compact"]) == 0
    assert f"{len(hits) - 2} images" in capsys.readouterr().out
    assert main(["index", "compact"]) == 0
    assert "nothing to fold" in capsys.readouterr().out
    time.sleep(settings.index_changes_poll_s + SLACK_S)  # whatever the gateway makes of the compacted build
    after = _hits(stub)
    assert len(after) == len(hits) - 2 and study not in {h.study_uid for h in after}
