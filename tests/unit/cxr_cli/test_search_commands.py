"""`cxr search` (cxr_cli.search_commands): its result table, PACS columns when hits have them, image counts when
grouped; and its calls through the client package: TLS with the token to a fake gateway, no token in plaintext
without --insecure, one line (no traceback) for a refusal, a missing file, an unreachable gateway. Run in a child
process from the checkout, as the other tests of the command line run `cxr`."""

import json
import os
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from cxr import dev_pki
from cxr.processes import free_ports
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr_cli import exit_codes
from gateway import error_details

ROOT = Path(__file__).resolve().parents[3]
REPORT = "Small left pleural effusion. " * 5 + "Patient Jane Doe seen for follow-up."
PRINT = """
from cxr_cli.main import build_parser
from cxr_cli.search_commands import print_hits
from cxr.retrieval.v1 import retrieval_pb2 as pb
hits = {hits}
print_hits(pb.SearchResponse(model="m", hits=[pb.Hit(**h) for h in hits]))
print(build_parser().parse_args(["search", "text", "x", "--group-by-study"]).group_by_study)
"""


def _table(*hits: dict) -> list[str]:
    done = subprocess.run([sys.executable, "-c", PRINT.format(hits=list(hits))], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout.splitlines()


def test_a_file_archive_s_hits_print_without_pacs_columns():
    lines = _table(dict(rank=1, score=0.5, study_uid="s1", projection="Frontal", labels=["Mass"]))
    assert lines[1].split() == ["rank", "score", "study", "projection", "labels", "impression"]
    assert lines[2].split() == ["1", "0.500", "s1", "Frontal", "Mass", "-"]
    assert lines[-1] == "True"  # --group-by-study reaches the request


def test_grouped_pacs_hits_print_accession_date_and_image_count():
    lines = _table(dict(rank=1, score=0.25, study_uid="1.2.3", accession_number="A9", study_date="20240102",
                        image_ids=["a", "b"], impression="Small left effusion."))
    assert lines[1].split()[:6] == ["rank", "score", "study", "accession", "date", "images"]
    assert lines[2].split()[:6] == ["1", "0.250", "1.2.3", "A9", "20240102", "2"]


def test_suggestions_print_after_the_table_as_evidence(capsys):
    from cxr_cli.search_commands import print_hits, search_document

    response = pb.SearchResponse(model="m", hits=[pb.Hit(rank=1, score=0.5, study_uid="s1")], suggestions=[
        pb.Suggestion(label="Effusion", probability=0.625, neighbours=7), pb.Suggestion(label="Mass", probability=0.1,
                                                                                        neighbours=1)])
    print_hits(response)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith("not a diagnosis): Effusion 0.62 (7 neighbours), Mass 0.10 (1 neighbours)")
    assert search_document(response)["suggestions"][0] == {"label": "Effusion", "probability": 0.625, "neighbours": 7}


class FakeGateway(pb_grpc.RetrievalServicer):
    """Answers a text search with one hit naming the credential it saw; an image search with its byte count;
    "slow down" with the gateway's rate-limit refusal (pushback -1: the client does not retry)."""

    def __init__(self):
        self.seen = []

    def SearchByText(self, request, context):
        self.seen.append(dict(context.invocation_metadata()).get("authorization", ""))
        if request.text == "slow down":
            context.set_trailing_metadata(error_details.trailers(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached: retry in 900 ms", "RATE_LIMIT", "r1", 0.9,
                time_remaining=0.5))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached: retry in 900 ms")
        if request.text == "as json":
            return pb.SearchResponse(model="m", hits=[pb.Hit(
                rank=1, score=0.5, image_id="i1", study_uid="s1", filename="/archive/DOE_JANE/i1.dcm",
                labels=["Effusion"], accession_number="A9", impression=REPORT, image_ids=["i1", "i2"])])
        return pb.SearchResponse(model="m", hits=[pb.Hit(rank=1, score=0.5, study_uid="s1", impression=self.seen[-1])])

    def SearchByImage(self, request, context):
        return pb.SearchResponse(model="m", hits=[pb.Hit(rank=1, score=0.5, study_uid=f"{len(request.image)}-bytes")])


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory):
    """A fake gateway with the development PKI's server certificate on loopback: (address, pki, servicer)."""
    pki = tmp_path_factory.mktemp("pki")
    dev_pki.write_dev_pki(pki)
    servicer = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_RetrievalServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([((pki / dev_pki.SERVER_KEY).read_bytes(),
                                                (pki / dev_pki.SERVER_CERT).read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    yield port, pki, servicer
    server.stop(0)


def _search(*argv: str, port: int = 1, **env) -> subprocess.CompletedProcess:
    """`cxr search ...` in a child process, against localhost:`port`."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    environ.update(CXR_GATEWAY_HOST="localhost", CXR_GATEWAY_PORT=str(port), **env,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "clients" / "python"),
                                                            environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "cxr_cli", "search", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=environ)


def test_a_search_goes_over_tls_with_the_token(tls_gateway, tmp_path):
    port, pki, servicer = tls_gateway
    done = _search("text", "effusion", "--ca", str(pki / dev_pki.CA_CERT), port=port, CXR_TOKEN="t0k3n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].split()[:3] == ["1", "0.500", "s1"] and "Bearer t0k3n" in done.stdout
    image = tmp_path / "x.png"
    image.write_bytes(bytes(321))
    done = _search("image", str(image), "--ca", str(pki / dev_pki.CA_CERT), port=port)
    assert done.returncode == 0 and "321-bytes" in done.stdout


def test_a_token_without_a_ca_is_refused_before_anything_is_sent(tls_gateway):
    port, _, servicer = tls_gateway
    before = len(servicer.seen)
    done = _search("text", "effusion", port=port, CXR_TOKEN="t0k3n")
    assert done.returncode == exit_codes.BAD_INPUT and "--ca" in done.stderr and "--insecure" in done.stderr
    assert "Traceback" not in done.stderr and len(servicer.seen) == before


def test_the_gateway_s_refusal_is_one_line_with_its_reason(tls_gateway):
    port, pki, _ = tls_gateway
    done = _search("text", "slow down", "--ca", str(pki / dev_pki.CA_CERT), port=port)
    assert done.returncode == exit_codes.REFUSED and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: RESOURCE_EXHAUSTED: rate limit reached: retry in 900 ms [RATE_LIMIT] "
                                   "(request id r1)")


@pytest.mark.parametrize("argv, words, status", [
    (("image", "/no/such/image.png"), "cannot read the image /no/such/image.png", exit_codes.NOT_FOUND),
    (("text", "effusion", "--timeout", "20"), "UNAVAILABLE: the gateway at localhost:", exit_codes.UNAVAILABLE)])
def test_a_missing_file_or_an_unreachable_gateway_is_one_line(argv, words, status):
    started = time.monotonic()
    done = _search(*argv, port=free_ports(1)[0])
    assert done.returncode == status and words in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 15  # the client's retries give up within seconds, not at the deadline


def test_json_is_one_document_with_the_table_s_excerpt_of_the_report(tls_gateway):
    port, pki, _ = tls_gateway
    done = _search("text", "as json", "--json", "--ca", str(pki / dev_pki.CA_CERT), port=port)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    (hit,) = document["hits"]
    assert document["model"] == "m" and (hit["rank"], hit["score"], hit["image_id"], hit["study_uid"]) == (
        1, 0.5, "i1", "s1")
    assert hit["labels"] == ["Effusion"] and hit["accession_number"] == "A9" and hit["image_ids"] == ["i1", "i2"]
    assert set(hit) == {"rank", "score", "image_id", "study_uid", "projection", "labels", "labels_derived",
                        "study_instance_uid", "series_instance_uid", "sop_instance_uid", "accession_number",
                        "study_date", "view_position", "viewer_url", "image_ids", "report_excerpt"}
    assert document["suggestions"] == []  # a text search
    assert len(hit["report_excerpt"]) == 60 and REPORT.startswith(hit["report_excerpt"][:-1])
    assert "Jane" not in done.stdout and "DOE_JANE" not in done.stdout  # the report past the excerpt, the file name
