"""gateway.http_messages: an image search's refinements from query parameters and form fields, and a search
by an archived image with no upload."""

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway.http_errors import Problem
from gateway.http_messages import request_message
from gateway.http_routes import ENDPOINTS

IMAGE_SEARCH = next(e for e in ENDPOINTS if e.rpc == "SearchByImage")


@pytest.fixture
def client():
    """POST /v1/search/image answers the SearchByImageRequest the gateway would send, serialized."""
    async def parse(request):
        try:
            message = await request_message(request, IMAGE_SEARCH, 1 << 22, 5)
        except Problem as problem:
            return JSONResponse({"problem": str(problem)}, status_code=problem.http)
        return JSONResponse({"message": message.SerializeToString().hex()})

    with TestClient(Starlette(routes=[Route(IMAGE_SEARCH.path, parse, methods=["POST"])])) as test_client:
        yield test_client


def _sent(answer) -> pb.SearchByImageRequest:
    assert answer.status_code == 200, answer.text
    return pb.SearchByImageRequest.FromString(bytes.fromhex(answer.json()["message"]))


def test_an_archived_image_is_searched_with_no_body_and_its_refinements_as_parameters(client):
    params = [("image_id", "00000001_000"), ("with_text", "with effusion"), ("roi.x", "0.25"), ("roi.y", "0"),
              ("roi.width", "0.5"), ("roi.height", "1"), ("relevant_image_id", "a"), ("relevant_image_id", "b"),
              ("not_relevant_image_id", "c")]
    sent = _sent(client.post("/v1/search/image", params=params))
    assert sent.image == b"" and sent.image_id == "00000001_000" and sent.with_text == "with effusion"
    assert (sent.roi.x, sent.roi.y, sent.roi.width, sent.roi.height) == (0.25, 0, 0.5, 1)
    assert list(sent.feedback.relevant_image_ids) == ["a", "b"]
    assert list(sent.feedback.not_relevant_image_ids) == ["c"]


def _form(**fields) -> tuple[bytes, dict]:
    """A multipart/form-data body of text fields only, and its Content-Type header."""
    parts = b"".join(f'--b0\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
                     for name, value in fields.items())
    return parts + b"--b0--\r\n", {"content-type": "multipart/form-data; boundary=b0"}


def test_form_fields_carry_the_same_and_the_file_part_is_optional_with_an_image_id(client):
    body, headers = _form(image_id="x", **{"roi.width": "0.5"})
    sent = _sent(client.post("/v1/search/image", content=body, headers=headers))
    assert sent.image == b"" and sent.image_id == "x" and sent.roi.width == 0.5
    sent = _sent(client.post("/v1/search/image", data={"with_text": "effusion"},
                             files={"image": ("q.png", b"\x89PNG....", "image/png")}))
    assert sent.image == b"\x89PNG...." and sent.with_text == "effusion"


def test_a_form_without_the_file_or_an_image_id_is_refused(client):
    body, headers = _form(with_text="effusion")
    answer = client.post("/v1/search/image", content=body, headers=headers)
    assert answer.status_code == 400 and "image_id" in answer.json()["problem"]


def test_a_region_that_is_no_number_is_refused_by_name(client):
    answer = client.post("/v1/search/image", params={"image_id": "x", "roi.x": "left"})
    assert answer.status_code == 400 and "roi.x must be a number" in answer.json()["problem"]
