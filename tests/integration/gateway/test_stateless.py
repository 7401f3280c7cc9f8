"""Two gateways over one index give the same answers: a gateway keeps no state of its own (the index
is files on disk that each one reads), so replicas behind a load balancer are interchangeable."""

from dataclasses import replace

import grpc
import pytest

from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
SAMPLES = DATA_DIR / "cxr_samples"
TEXTS = ["small left pleural effusion", "cardiomegaly", "no acute cardiopulmonary process", "pneumothorax"]
IMAGES = ["00000001_000.png", "16747_3_1.jpg"]
FILTERS = pb.Filters(labels=["Cardiomegaly"], projections=["Frontal"])


def _requests() -> list[tuple[str, object]]:
    texts = [("SearchByText", pb.SearchByTextRequest(text=text, top_k=20)) for text in TEXTS]
    filtered = [("SearchByText", pb.SearchByTextRequest(text="enlarged heart", top_k=20, filters=FILTERS))]
    images = [("SearchByImage", pb.SearchByImageRequest(image=(SAMPLES / name).read_bytes(), top_k=20))
              for name in IMAGES]
    return texts + filtered + images


def _answer(channel: grpc.Channel, method: str, request) -> list[tuple[str, float]]:
    response = getattr(retrieval_pb2_grpc.RetrievalStub(channel), method)(request, timeout=30)
    return [(hit.image_id, hit.score) for hit in response.hits]


def test_two_gateways_over_one_index_give_the_same_answers(gateway, served, nih_index):
    second = BackgroundGateway(replace(served, model="medsiglip-tiny"))  # a fresh one beside the session's
    try:
        with grpc.insecure_channel(gateway) as one, grpc.insecure_channel(second.address) as other:
            # One query at a time, to each gateway in turn: what one has served cannot shape the other's answer.
            answers = [(_answer(one, *call), _answer(other, *call)) for call in _requests()]
    finally:
        second.stop()
    for first, again in answers:
        assert len(first) == 20
        assert [image_id for image_id, _ in first] == [image_id for image_id, _ in again]
        # Equal up to float rounding: Triton may batch a query with others' and round differently.
        assert [score for _, score in first] == pytest.approx([score for _, score in again], abs=1e-6)
