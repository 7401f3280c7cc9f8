"""Issue 17, defects 4, 11, 19 and 21 (images): hostile uploads through the real gateway, over gRPC
(SearchByImage, BatchSearch) and HTTP (POST /v1/search/image, raw body and multipart), in both
configurations (A: defaults, plaintext; B: mutual TLS, tokens, audit).

Each hostile image gets INVALID_ARGUMENT (HTTP 400) with a message that names the limit or field at
fault and echoes none of the upload's bytes; the same request shape with a real radiograph still
answers; and the gateway keeps answering afterwards. The payloads come from benchmarks.hostile (the
`make fuzz` mix).
"""

from __future__ import annotations

import ssl

import grpc
import httpx
import pytest

from benchmarks import hostile
from cxr.client import channel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from support import DATA_DIR

pytestmark = pytest.mark.triton
SAMPLES = DATA_DIR / "cxr_samples"
VALID = SAMPLES / "00000001_000.png"
MARKER = b"PatientJaneRoe"  # what an upload may hold; never in an answer
CONFIGURATIONS = ("open_gateway", "secured_gateway")
SHAPES = ("SearchByImage", "BatchSearch", "http raw", "http multipart")


def _payloads() -> dict[str, tuple[bytes, str]]:
    """Hostile upload -> words its refusal must hold (the limit or field it names)."""
    images = hostile.HostileImages(SAMPLES)
    dicom = images.dicoms[0]
    lying_frame = hostile.jpeg_claiming(images.jpegs[0], 14_000, 14_000)
    return {
        "1 x 49,000,000 PNG": (hostile.png(1, 49_000_000), "max_image_side"),  # defect 4
        "12000 x 1000 PNG": (hostile.png(12_000, 1_000), "max_image_aspect"),
        "JPEG claiming 7000 x 7000": (images.k_jpeg_lying_about_its_size(), "less coded data"),  # defect 19
        "64 x 64 DICOM around a 14000 x 14000 JPEG": (hostile.dicom_around_frame(dicom, lying_frame, 64, 64),
                                                      "Rows, Columns"),  # defect 11
        "deflated DICOM inflating to 1 GB": (hostile.deflated_dicom_bomb(dicom, 2**30), "max_image_pixels"),
        "text with a patient's name": (MARKER + b": no acute disease.\n" * 4, "not a PNG, JPEG or DICOM"),
        "truncated JPEG": (images.jpegs[0][:3000] + MARKER, "damaged or truncated"),
    }


PAYLOADS = _payloads()


@pytest.fixture(params=CONFIGURATIONS)
def target(request):
    return request.getfixturevalue(request.param)


def _grpc(target) -> grpc.Channel:
    s = target.settings
    if not s.tls:
        return channel(target.address)
    return channel(target.address.replace("127.0.0.1", "localhost"), s.ca, s.client_cert, s.client_key, s.token)


def _http(target) -> httpx.Client:
    s = target.settings
    if not s.tls:
        return httpx.Client(base_url=target.http_url, timeout=60)
    context = ssl.create_default_context(cafile=s.ca)
    context.load_cert_chain(s.client_cert, s.client_key)
    return httpx.Client(base_url=target.http_url.replace("127.0.0.1", "localhost"), verify=context, timeout=60,
                        headers={"authorization": f"Bearer {s.token}"})


def _send(target, shape: str, data: bytes) -> tuple[str, str, int]:
    """(status name, error message or "", hits) for `data` sent in request shape `shape`; over HTTP the
    status name is the error body's, prefixed with the HTTP status ("400 INVALID_ARGUMENT")."""
    if shape.startswith("http"):
        with _http(target) as http:
            if shape == "http raw":
                answer = http.post("/v1/search/image", params={"top_k": "3"}, content=data,
                                   headers={"content-type": "application/octet-stream"})
            else:
                answer = http.post("/v1/search/image", files={"image": ("upload", data, "application/octet-stream")},
                                   data={"top_k": "3"})
        if answer.status_code == 200:
            return "OK", "", len(answer.json()["hits"])
        error = answer.json()["error"]
        return f"{answer.status_code} {error['status']}", error["message"], 0
    with _grpc(target) as ch:
        stub = pb_grpc.RetrievalStub(ch)
        request = pb.SearchByImageRequest(image=data, top_k=3)
        try:
            if shape == "SearchByImage":
                return "OK", "", len(stub.SearchByImage(request, timeout=60).hits)
            batch = stub.BatchSearch(pb.BatchSearchRequest(queries=[pb.SearchQuery(image=request)]), timeout=60)
            return "OK", "", len(batch.results[0].hits)
        except grpc.RpcError as error:
            return error.code().name, error.details(), 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_hostile_image_is_refused_cleanly_and_the_gateway_keeps_answering(target, shape, payload):
    data, words = PAYLOADS[payload]
    status, message, _ = _send(target, shape, data)
    assert status == ("400 INVALID_ARGUMENT" if shape.startswith("http") else "INVALID_ARGUMENT"), (status, message)
    assert words in message, message
    assert MARKER.decode() not in message and "b'" not in message and "\\x" not in message, message
    assert "send" in message  # it says what to do
    assert _send(target, shape, VALID.read_bytes()) == ("OK", "", 3)  # the same request shape still works


@pytest.mark.parametrize("shape", SHAPES)
def test_a_png_with_dicm_at_byte_128_is_searched_as_the_png_it_is(target, shape):
    tagged = hostile.png_with_text_at(VALID.read_bytes(), 128, b"DICM")  # defect 19: was refused as DICOM
    assert _send(target, shape, tagged) == ("OK", "", 3)
