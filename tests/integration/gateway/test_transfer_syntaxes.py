"""Every transfer syntax of benchmarks.dicom_variants as a SearchByImage query to one real gateway, over
gRPC and over HTTP (issue 19): a lossless variant gets exactly the native file's answer, a lossy one
nearly; HTTP answers what gRPC answers; what cannot be decoded or compared is refused with the reason."""

import io

import grpc
import httpx
import pytest
from google.protobuf import json_format

from benchmarks.dicom_variants import MATRIX, REFUSED, VARIANTS, not_comparable
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc

pytestmark = pytest.mark.triton
TOP_K = 20
LOSSY_SCORE_DELTA = 0.01  # the most a lossy variant may move an image's score (measured: 0.002, the YBR JPEG)
LOSSY_SHARED_TOP = 15  # of the native's TOP_K hits, at least these are in the lossy variant's
CASES = [(native, variant) for native, variants in MATRIX.items() for variant in variants
         if (native, variant) not in REFUSED]


@pytest.fixture(scope="module")
def stub(web):
    with grpc.insecure_channel(web.address, options=[("grpc.max_send_message_length", 80 << 20)]) as channel:
        yield pb_grpc.RetrievalStub(channel)


@pytest.fixture(scope="module")
def http(web):
    with httpx.Client(base_url=web.http_url, timeout=60) as client:
        yield client


def _http(http, data: bytes) -> httpx.Response:
    return http.post("/v1/search/image", params={"top_k": str(TOP_K)}, content=data,
                     headers={"content-type": "application/dicom"})


def _answer(stub, http, data: bytes) -> dict[str, float]:
    """{image_id: score} of the gRPC answer, after checking that HTTP answers the same."""
    hits = json_format.MessageToDict(stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=TOP_K)))["hits"]
    over_http = _http(http, data)
    assert over_http.status_code == 200, over_http.text
    assert [h["imageId"] for h in over_http.json()["hits"]] == [h["imageId"] for h in hits]
    assert [h["score"] for h in over_http.json()["hits"]] == pytest.approx([h["score"] for h in hits], abs=1e-6)
    return {hit["imageId"]: hit["score"] for hit in hits}


@pytest.mark.parametrize("native, variant", CASES, ids=[f"{n}-{v}" for n, v in CASES])
def test_every_variant_gets_the_native_file_s_answer(stub, http, dicom_variants, native, variant):
    expected = _answer(stub, http, dicom_variants[native, "native"].read_bytes())
    got = _answer(stub, http, dicom_variants[native, variant].read_bytes())
    if VARIANTS[variant].tolerance is None:
        assert list(got) == list(expected)
        assert list(got.values()) == pytest.approx(list(expected.values()), abs=1e-5)
        return
    shared = set(got) & set(expected)
    assert len(shared) >= LOSSY_SHARED_TOP, (len(shared), variant)
    assert max(abs(got[i] - expected[i]) for i in shared) <= LOSSY_SCORE_DELTA


def _refused(stub, http, data: bytes, words: str) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=TOP_K))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.value.details()
    over_http = _http(http, data)
    assert over_http.status_code == 400 and over_http.json()["error"]["message"] == error.value.details()


@pytest.mark.parametrize("native, variant", sorted(REFUSED))
def test_twelve_bit_jpeg_extended_is_refused_naming_the_syntax(stub, http, dicom_variants, native, variant):
    _refused(stub, http, dicom_variants[native, variant].read_bytes(), "JPEG Extended with 12-bit samples")


@pytest.mark.parametrize("name, words", [
    ("sr", "the DICOM is a structured report (SR), not an image"),
    ("pr", "the DICOM is a presentation state (PR), not an image"),
    ("ko", "the DICOM is a key object selection document (KO), not an image"),
    ("for-processing", "the DICOM is raw detector data (PresentationIntentType FOR PROCESSING)"),
    ("knee", "the DICOM is an image of another body part"),
])
def test_a_dicom_with_no_chest_image_to_compare_is_refused_with_the_reason(stub, http, name, words):
    buffer = io.BytesIO()
    not_comparable()[name].save_as(buffer, enforce_file_format=True)
    _refused(stub, http, buffer.getvalue(), words)
