"""End to end over loopback: real gateway, real Triton, real FAISS index of the NIH sample."""

import io

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from cxr.retrieval.v1 import retrieval_pb2 as pb
from support import DATA_DIR

pytestmark = pytest.mark.triton
SAMPLES = DATA_DIR / "cxr_samples"
DICOM = SAMPLES / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
NIH_IMAGE = DATA_DIR / "nih800" / "valid" / "1_abnormal"


def _png16(path) -> bytes:
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def _abort(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def test_text_query_returns_top_k_hits_with_reports(stub):
    response = stub.SearchByText(pb.SearchByTextRequest(text="small left pleural effusion", top_k=7))
    assert response.model == "medsiglip-tiny"
    assert [h.rank for h in response.hits] == list(range(1, 8))
    scores = [h.score for h in response.hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h.image_id and h.study_uid and h.filename and h.projection and h.labels for h in response.hits)


@pytest.mark.parametrize("image", ["00000001_000.png", "png16", "16747_3_1.jpg", "covid-19-pneumonia-58-prior.jpg",
                                   "dicom", "h0001.png"])
def test_image_queries_in_every_format_return_hits(stub, image):
    data = {"png16": lambda: _png16(SAMPLES / "00000001_000.png"), "dicom": DICOM.read_bytes}.get(
        image, lambda: (SAMPLES / image).read_bytes())()
    response = stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=5))
    assert len(response.hits) == 5


def test_an_indexed_image_ranks_itself_first(stub):
    path = sorted(NIH_IMAGE.glob("*.png"))[3]
    (first, *_) = stub.SearchByImage(pb.SearchByImageRequest(image=path.read_bytes(), top_k=3)).hits
    assert first.image_id == path.name and first.score > 0.9999


def test_filters_filter(stub):
    filters = pb.Filters(labels=["Cardiomegaly"], projections=["Frontal"])
    response = stub.SearchByText(pb.SearchByTextRequest(text="enlarged heart", top_k=50, filters=filters))
    assert len(response.hits) == 50
    assert all("Cardiomegaly" in h.labels and h.projection == "Frontal" for h in response.hits)


def test_batch_search_answers_in_request_order(stub):
    queries = [pb.SearchQuery(text=pb.SearchByTextRequest(text="pneumothorax", top_k=2)),
               pb.SearchQuery(image=pb.SearchByImageRequest(image=DICOM.read_bytes(), top_k=4))]
    response = stub.BatchSearch(pb.BatchSearchRequest(queries=queries))
    assert [len(r.hits) for r in response.results] == [2, 4]


def test_get_study_and_list_models(stub):
    hit = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=1)).hits[0]
    study = stub.GetStudy(pb.GetStudyRequest(study_uid=hit.study_uid))
    assert hit.image_id in study.image_ids and list(study.labels) == list(hit.labels)
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    active = models["medsiglip-tiny"]
    assert active.active and active.exported and active.ready
    assert (active.index_size, active.embed_dim, active.image_size, active.index_type) == (800, 32, 448, "flat")
    assert not models["medsiglip"].exported


BAD_INPUTS = {
    "empty text": (lambda s: s.SearchByText(pb.SearchByTextRequest(text=" ", top_k=5)),
                   grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    "100 KB text": (lambda s: s.SearchByText(pb.SearchByTextRequest(text="effusion " * 12_000, top_k=5)),
                    grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    "top_k -1": (lambda s: s.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=-1)),
                grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    "top_k 10^6": (lambda s: s.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=10**6)),
                   grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    "corrupt image": (lambda s: s.SearchByImage(pb.SearchByImageRequest(
        image=(SAMPLES / "16747_3_1.jpg").read_bytes()[:4000], top_k=5)), grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    "text file as image": (lambda s: s.SearchByImage(pb.SearchByImageRequest(
        image=(DATA_DIR / "README.md").read_bytes(), top_k=5)), grpc.StatusCode.INVALID_ARGUMENT, "not a PNG, JPEG or DICOM"),
    "50 MB payload": (lambda s: s.SearchByImage(pb.SearchByImageRequest(image=b"\0" * (50 << 20), top_k=5)),
                      grpc.StatusCode.INVALID_ARGUMENT, "limit"),
    "unknown model": (lambda s: s.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=5, model="gpt")),
                      grpc.StatusCode.NOT_FOUND, "Available"),
    "unknown filter": (lambda s: s.SearchByText(pb.SearchByTextRequest(
        text="effusion", top_k=5, filters=pb.Filters(labels=["Broken bone"]))), grpc.StatusCode.INVALID_ARGUMENT,
        "Cardiomegaly"),
    "unknown study": (lambda s: s.GetStudy(pb.GetStudyRequest(study_uid="nope")), grpc.StatusCode.NOT_FOUND,
                      "study_uid"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_its_status_and_the_server_keeps_serving(stub, gateway, case):
    call, code, words = BAD_INPUTS[case]
    error = _abort(lambda: call(stub))
    assert error.code() == code, error.details()
    assert words in error.details()
    assert len(stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=3)).hits) == 3


def test_health_is_serving_and_reflection_lists_the_service(gateway):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(gateway) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="cxr.retrieval.v1.Retrieval")).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]))
        names = {s.name for s in answer.list_services_response.service}
    assert {"cxr.retrieval.v1.Retrieval", "grpc.health.v1.Health"} <= names


def test_an_index_built_by_another_model_is_a_failed_precondition(stub, served, nih_index):
    import shutil

    shutil.copytree(nih_index, served.index_path("siglip-tiny"), dirs_exist_ok=True)
    try:
        import time

        time.sleep(2.5)  # the gateway looks for new indexes every second
        error = _abort(lambda: stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=3, model="siglip-tiny")))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "medsiglip-tiny (32-d)" in error.details() and "siglip-tiny (32-d)" in error.details()
        assert "cxr index build --model siglip-tiny" in error.details()
    finally:
        shutil.rmtree(served.index_path("siglip-tiny"))


def test_a_bad_query_in_a_batch_is_named_by_its_position(stub):
    queries = [pb.SearchQuery(text=pb.SearchByTextRequest(text="effusion", top_k=2)),
               pb.SearchQuery(text=pb.SearchByTextRequest(text="", top_k=2))]
    error = _abort(lambda: stub.BatchSearch(pb.BatchSearchRequest(queries=queries)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("query 1: text is empty")


# Refine (issue 22), through the real Triton and the NIH index.

def test_an_archived_image_searches_as_its_upload_does(stub):
    path = sorted(NIH_IMAGE.glob("*.png"))[3]
    uploaded = stub.SearchByImage(pb.SearchByImageRequest(image=path.read_bytes(), top_k=10)).hits
    archived = stub.SearchByImage(pb.SearchByImageRequest(image_id=path.name, top_k=10)).hits
    assert [h.image_id for h in archived][0] == path.name and archived[0].score > 0.9999
    assert [h.image_id for h in archived] == [h.image_id for h in uploaded]
    assert [h.score for h in archived] == pytest.approx([h.score for h in uploaded], abs=1e-4)


def test_a_region_of_interest_is_embedded_by_triton_at_the_model_s_size(stub):
    """Triton's image tower takes only the model's size: an answer means the crop was resized to it."""
    data = DICOM.read_bytes()
    whole = stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=5)).hits
    roi = pb.RegionOfInterest(x=0.5, y=0.2, width=0.5, height=0.6)  # one lung
    cropped = stub.SearchByImage(pb.SearchByImageRequest(image=data, top_k=5, roi=roi)).hits
    assert len(cropped) == 5
    assert [(h.image_id, round(h.score, 4)) for h in cropped] != [(h.image_id, round(h.score, 4)) for h in whole]


def test_feedback_and_with_text_move_an_archived_image_query(stub):
    path = sorted(NIH_IMAGE.glob("*.png"))[3]
    plain = stub.SearchByImage(pb.SearchByImageRequest(image_id=path.name, top_k=20)).hits
    judged = pb.Feedback(relevant_image_ids=[plain[5].image_id], not_relevant_image_ids=[plain[1].image_id])
    fed = stub.SearchByImage(pb.SearchByImageRequest(image_id=path.name, top_k=20, feedback=judged)).hits
    ranks = {h.image_id: i for i, h in enumerate(fed)}
    assert ranks[plain[5].image_id] < 5 and ranks.get(plain[1].image_id, 20) > 1
    worded = stub.SearchByImage(pb.SearchByImageRequest(image_id=path.name, top_k=20, with_text="effusion")).hits
    assert [h.image_id for h in worded] != [h.image_id for h in plain]
