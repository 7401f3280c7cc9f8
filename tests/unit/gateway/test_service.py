"""RetrievalService's own logic, with no Triton: a fake embedder through the service's Embedder seam,
a real FAISS index (a living one for deletions), and the service behind a real grpc.aio server on
loopback."""

import asyncio
import contextlib
import io
import threading
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

import cxr
from cxr.images import ImageLimits, dicom_identity
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.store import faiss_writer
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change, Committed
from cxr.suggestions import Calibration
from gateway import error_details
from gateway import service as service_module
from gateway.admission import DecodeQueue
from gateway.embedding import Embedder
from gateway.indexes import IndexSet
from gateway.request_errors import ImageNotFoundError
from gateway.service import RetrievalService
from support import DATA_DIR
from support import SAMPLE_DICOM

MODEL = "cxr-mini"  # a registry name: ListModels and GetSearchOptions read the registry entry
DIM = 8
IMAGES = 12  # two images per study


@dataclass
class FakeModel:
    name: str = MODEL
    embed_dim: int = DIM
    export_sha256: str = "a" * 64
    image_size: int = 16


def _vectors() -> np.ndarray:
    vectors = np.random.default_rng(0).normal(size=(IMAGES, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class FakeEmbedder(Embedder):
    """Every text embeds to the vector of image 3 (those of TEXT_IMAGES to others'), every image to that of
    image 5; notes what it was asked."""

    TEXT_IMAGES = {"pacemaker": 8}

    def __init__(self):
        self.texts = []
        self.pixels = []
        self.closed = False

    async def embed_texts(self, model, texts, timeout=None):
        self.texts += texts
        return np.stack([_vectors()[self.TEXT_IMAGES.get(text, 3)] for text in texts])

    async def embed_images(self, model, pixels, timeout=None):
        self.pixels.append(pixels)
        return np.stack([_vectors()[5]] * len(pixels))

    async def is_ready(self, model):
        return True

    async def close(self):
        self.closed = True


class RecordingFaiss(FaissBackend):
    """The FAISS backend (a living index: commits beside the build), noting the changes committed through it."""

    def __init__(self, index_dir):
        super().__init__(index_dir)
        self.changes = []

    def apply(self, model, change: Change) -> Committed:
        self.changes.append(change)
        return super().apply(model, change)


def _labels(i: int) -> list[str]:
    return (["Effusion"] if i % 3 == 0 else []) + (["Mass"] if i % 4 == 1 else [])


@contextlib.contextmanager
def _serving(tmp_path, backend, calibration: dict | None = None):
    """The service over an index of IMAGES images in `backend`, behind a grpc.aio server on loopback."""
    metadata = [{"image_id": str(i), "study_uid": f"s{i // 2}", "labels": _labels(i),
                 "patient_id": f"p{i // 4}", "study_date": "" if i % 4 == 3 else f"2020{1 + i:02d}01"}
                for i in range(IMAGES)]
    patient, study = dicom_identity(SAMPLE_DICOM.read_bytes())
    for row in metadata[4:8]:  # the patient of the sample DICOM, whose study holds images 10 and 11
        row["patient_id"] = patient
    for row in metadata[10:]:
        row["study_uid"] = study
    faiss_writer.write(tmp_path / MODEL, _vectors(), metadata, {"model": MODEL, "export_sha256": "a" * 64}, [], "flat")
    if calibration is not None:
        backend.set_calibration(MODEL, calibration)
    catalog = {MODEL: FakeModel()}
    embedder = FakeEmbedder()
    indexes = IndexSet(backend, catalog)
    decoder = DecodeQueue(1, 4, 10**8)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def up():
        server = grpc.aio.server()
        pb_grpc.add_RetrievalServicer_to_server(
            RetrievalService(catalog, indexes, embedder, MODEL, decoder, ImageLimits()), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(up(), loop).result(10)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RetrievalStub(channel), embedder
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    decoder.shutdown()
    indexes.close()


@pytest.fixture
def service(tmp_path):
    with _serving(tmp_path, FaissBackend(tmp_path)) as served:
        yield served


@pytest.fixture
def living(tmp_path):
    """The service over a living FAISS index whose commits only a refresh takes in (the IndexSet's watcher
    is not started): a deletion answered before its refresh would still be found. Yields the stub and the
    backend."""
    backend = RecordingFaiss(tmp_path)
    with _serving(tmp_path, backend) as (stub, _):
        yield stub, backend


CALIBRATION = {"format": 1, "k": 5, "weighting": "similarity", "fitted": {},
               "labels": {"Effusion": {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.02, 0.3, 0.9]},
                          "Mass": {"method": "platt", "a": 4.0, "b": -3.0}}}
PNG = sorted((DATA_DIR / "nih800").rglob("*.png"))[0]


@pytest.fixture
def calibrated(tmp_path):
    with _serving(tmp_path, FaissBackend(tmp_path), CALIBRATION) as served:
        yield served[0]


def _expected_suggestions(excluded=()) -> list[tuple[str, float, int]]:
    """What the 5 images nearest the image query's vector (image 5's), less the `excluded` ones, carry,
    through CALIBRATION's maps."""
    scores = _vectors() @ _vectors()[5]
    nearest = [i for i in np.argsort(-scores) if str(i) not in excluded][:5]
    calibration = Calibration.from_dict(CALIBRATION)
    return [(s.label, s.probability, s.neighbours)
            for s in calibration.suggest(scores[nearest].tolist(), [_labels(int(i)) for i in nearest])]


@pytest.mark.parametrize("top_k, filters", [(2, None), (10, None), (3, pb.Filters(labels=["Mass"]))])
def test_an_image_query_gets_the_calibrated_suggestions_of_its_nearest_images(calibrated, top_k, filters):
    """The voters are the calibration's k nearest, whatever top_k and the label filter."""
    request = pb.SearchByImageRequest(image=PNG.read_bytes(), top_k=top_k, filters=filters)
    response = calibrated.SearchByImage(request, timeout=10)
    assert len(response.hits) == top_k
    if filters is not None:
        assert all("Mass" in hit.labels for hit in response.hits)
    found = [(s.label, s.probability, s.neighbours) for s in response.suggestions]
    expected = _expected_suggestions()
    assert [(label, n) for label, _, n in found] == [(label, n) for label, _, n in expected] and found
    assert [p for _, p, _ in found] == pytest.approx([p for _, p, _ in expected], abs=1e-6)
    assert [p for _, p, _ in found] == sorted((p for _, p, _ in found), reverse=True)


def test_the_voters_leave_out_the_patient_the_query_excludes(calibrated):
    """The calibration was fitted without each query's own patient: excluded, its images do not vote."""
    request = pb.SearchByImageRequest(image=SAMPLE_DICOM.read_bytes(), top_k=3, exclude_same_patient=True)
    found = [(s.label, s.neighbours) for s in calibrated.SearchByImage(request, timeout=10).suggestions]
    expected = [(label, n) for label, _, n in _expected_suggestions(excluded={"4", "5", "6", "7"})]
    assert found == expected and found != [(label, n) for label, _, n in _expected_suggestions()]


def test_a_text_query_gets_no_suggestions(calibrated):
    response = calibrated.SearchByText(pb.SearchByTextRequest(text="effusion"), timeout=10)
    assert response.hits and not response.suggestions


def test_an_image_query_of_an_uncalibrated_index_gets_no_suggestions(service):
    stub, _ = service
    response = stub.SearchByImage(pb.SearchByImageRequest(image=PNG.read_bytes()), timeout=10)
    assert response.hits and not response.suggestions


def test_a_text_query_returns_the_nearest_images_first(service):
    stub, embedder = service
    hits = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=4), timeout=10).hits
    assert [h.image_id for h in hits][0] == "3" and len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert embedder.texts == ["effusion"]


def _details(error: grpc.RpcError) -> dict:
    """{detail type name: message} of the google.rpc.Status a failed call carries."""
    found = error_details.parsed(error.code(), error.trailing_metadata())
    assert found is not None, "the error carries no google.rpc.Status"
    return {type(message).__name__: message for message in error_details.unpacked(found)}


@pytest.mark.parametrize("request_, words, field", [(pb.SearchByTextRequest(text="  "), "text is empty", "text"),
                                                    (pb.SearchByTextRequest(text="x", top_k=1001), "top_k", "top_k"),
                                                    (pb.SearchByTextRequest(text="x",
                                                                            filters=pb.Filters(labels=["?"])),
                                                     "label", "filters")])
def test_bad_fields_are_refused_before_anything_is_embedded(service, request_, words, field):
    stub, embedder = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(request_, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.value.details()
    assert embedder.texts == []
    (violation,) = _details(error.value)["BadRequest"].field_violations
    assert violation.field == field and violation.description == error.value.details()


def test_bytes_that_are_no_image_are_a_fault_of_the_image_field(service):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image=b"not an image at all"), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error.value)["BadRequest"].field_violations[0].field == "image"


def test_an_unknown_model_is_not_found(service):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(pb.SearchByTextRequest(text="x", model="pubmed_clip"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    details = _details(error.value)
    assert (details["ErrorInfo"].reason, details["ErrorInfo"].domain) == ("UNKNOWN_MODEL", "cxr-retrieval")
    assert "BadRequest" not in details and "RetryInfo" not in details


def test_grouped_by_study_each_study_once(service):
    stub, _ = service
    hits = stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=3, group_by_study=True), timeout=10).hits
    studies = [h.study_uid for h in hits]
    assert len(studies) == 3 == len(set(studies)) and studies[0] == "s1"


def test_a_label_filter_keeps_only_images_with_the_label(service):
    stub, _ = service
    request = pb.SearchByTextRequest(text="x", top_k=10, filters=pb.Filters(labels=["Effusion"]))
    hits = stub.SearchByText(request, timeout=10).hits
    assert {h.image_id for h in hits} == {"0", "3", "6", "9"}


def test_a_batch_names_the_position_of_its_bad_query(service):
    stub, _ = service
    queries = [pb.SearchQuery(text=pb.SearchByTextRequest(text="x")), pb.SearchQuery(text=pb.SearchByTextRequest())]
    with pytest.raises(grpc.RpcError) as error:
        stub.BatchSearch(pb.BatchSearchRequest(queries=queries), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "query 1" in error.value.details()
    details = _details(error.value)
    assert details["BadRequest"].field_violations[0].field == "queries[1].text.text"
    assert details["ErrorInfo"].reason == "INVALID_REQUEST"


def test_get_study_and_its_absence(service):
    stub, _ = service
    study = stub.GetStudy(pb.GetStudyRequest(study_uid="s2"), timeout=10)
    assert list(study.image_ids) == ["4", "5"]
    with pytest.raises(grpc.RpcError) as error:
        stub.GetStudy(pb.GetStudyRequest(study_uid="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_models_shows_the_served_index_and_the_gateway_s_version(service):
    stub, _ = service
    answer = stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert answer.server_version == cxr.__version__ and answer.server_version.count(".") == 2
    models = {m.name: m for m in answer.models}
    assert models[MODEL].active and models[MODEL].ready and models[MODEL].index_size == IMAGES
    assert not models["pubmed_clip"].exported and models["pubmed_clip"].index_size == 0


def _image_ids(stub) -> set[str]:
    return {h.image_id for h in stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=IMAGES), timeout=10).hits}


def test_a_deleted_study_is_gone_from_the_first_search_after_the_answer(living):
    stub, backend = living
    assert _image_ids(stub) == {str(i) for i in range(IMAGES)}
    answer = stub.DeleteStudy(pb.DeleteStudyRequest(study_uid="s1"), timeout=10)
    assert (answer.deleted, answer.generation) == (2, 1)
    assert backend.changes == [Change(study_uids=("s1",))]
    assert _image_ids(stub) == {str(i) for i in range(IMAGES)} - {"2", "3"}
    with pytest.raises(grpc.RpcError) as error:
        stub.GetStudy(pb.GetStudyRequest(study_uid="s1"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_deleted_image_is_gone_and_its_study_keeps_the_other(living):
    stub, backend = living
    answer = stub.DeleteImage(pb.DeleteImageRequest(image_id="4", model=MODEL), timeout=10)
    assert (answer.deleted, answer.generation) == (1, 1)
    assert backend.changes == [Change(image_ids=("4",))]
    assert "4" not in _image_ids(stub)
    assert list(stub.GetStudy(pb.GetStudyRequest(study_uid="s2"), timeout=10).image_ids) == ["5"]


@pytest.mark.parametrize("rpc, request_, words", [
    ("DeleteStudy", pb.DeleteStudyRequest(study_uid="s1"), "nothing indexed under that UID"),
    ("DeleteImage", pb.DeleteImageRequest(image_id="2"), "nothing indexed under that id"),
])
def test_deleting_again_is_not_found_with_the_reason(living, rpc, request_, words):
    stub, _ = living
    getattr(stub, rpc)(request_, timeout=10)
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, rpc)(request_, timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert words in error.value.details() and "already deleted or never indexed" in error.value.details()


@pytest.mark.parametrize("rpc, request_, code", [
    ("DeleteStudy", pb.DeleteStudyRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ("DeleteImage", pb.DeleteImageRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ("DeleteStudy", pb.DeleteStudyRequest(study_uid="s1", model="pubmed_clip"), grpc.StatusCode.NOT_FOUND),
])
def test_a_deletion_naming_nothing_or_a_model_not_served_commits_nothing(living, rpc, request_, code):
    stub, backend = living
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, rpc)(request_, timeout=10)
    assert error.value.code() == code and backend.changes == []
    assert len(_image_ids(stub)) == IMAGES


# Refine (issue 22): an archived image as the query, relevance feedback, text modifiers, a region of interest.

def _ranked(query: np.ndarray) -> list[str]:
    """Every image id of the index by cosine to `query`, best first: what the service should answer."""
    query = query / np.linalg.norm(query)
    return [str(i) for i in np.argsort(-(_vectors() @ query), kind="stable")]


def _ids(response) -> list[str]:
    return [hit.image_id for hit in response.hits]


def test_an_archived_image_is_searched_by_its_stored_vector_without_upload(service):
    stub, embedder = service
    hits = stub.SearchByImage(pb.SearchByImageRequest(image_id="7", top_k=IMAGES), timeout=10).hits
    assert [h.image_id for h in hits] == _ranked(_vectors()[7]) and hits[0].image_id == "7"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert embedder.pixels == [] and embedder.texts == []


@pytest.mark.parametrize("request_, field", [(pb.SearchByImageRequest(), "image"),
                                             (pb.SearchByImageRequest(image=b"x", image_id="7"), "image_id")])
def test_exactly_one_of_image_and_image_id_is_asked_for_by_name(service, request_, field):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(request_, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error.value)["BadRequest"].field_violations[0].field == field


def test_an_archived_image_not_in_the_index_is_not_found_as_get_thumbnail_says(service):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image_id="00000116_017"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "image_id" in error.value.details()
    assert "00000116" not in error.value.details()  # an id may carry a patient number
    assert _details(error.value)["ErrorInfo"].reason == "IMAGE_NOT_FOUND"


def test_feedback_moves_a_text_query_as_rocchio_says(service):
    stub, _ = service
    plain = _ids(stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=IMAGES), timeout=10))
    feedback = pb.Feedback(relevant_image_ids=["0", "10"], not_relevant_image_ids=["3"])
    fed = _ids(stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=IMAGES, feedback=feedback),
                                 timeout=10))
    v = _vectors()
    expected = _ranked(1.0 * v[3] + 0.75 * (v[0] + v[10]) / 2 - 0.15 * v[3])
    assert fed == expected and fed != plain


def test_feedback_rounds_accumulate_on_an_image_query(service):
    stub, _ = service
    v, judged = _vectors(), pb.Feedback()
    for relevant, not_relevant in (("1", "2"), ("4", "6")):
        judged.relevant_image_ids.append(relevant)
        judged.not_relevant_image_ids.append(not_relevant)
        found = _ids(stub.SearchByImage(pb.SearchByImageRequest(image_id="5", top_k=IMAGES, feedback=judged),
                                        timeout=10))
        relevant_mean = v[[int(i) for i in judged.relevant_image_ids]].mean(axis=0)
        not_relevant_mean = v[[int(i) for i in judged.not_relevant_image_ids]].mean(axis=0)
        assert found == _ranked(v[5] + 0.75 * relevant_mean - 0.15 * not_relevant_mean)


@pytest.mark.parametrize("feedback, code, field", [
    (pb.Feedback(relevant_image_ids=["1", "absent"]), grpc.StatusCode.NOT_FOUND, "feedback.relevant_image_ids[1]"),
    (pb.Feedback(not_relevant_image_ids=["absent"]), grpc.StatusCode.NOT_FOUND,
     "feedback.not_relevant_image_ids[0]"),
    (pb.Feedback(relevant_image_ids=["1"] * 101), grpc.StatusCode.INVALID_ARGUMENT, "feedback.relevant_image_ids"),
    (pb.Feedback(relevant_image_ids=["1", ""]), grpc.StatusCode.INVALID_ARGUMENT, "feedback.relevant_image_ids"),
    (pb.Feedback(relevant_image_ids=["1"], not_relevant_image_ids=["1"]), grpc.StatusCode.INVALID_ARGUMENT,
     "feedback.not_relevant_image_ids")])
def test_feedback_naming_images_not_indexed_or_too_many_is_refused_by_field(service, feedback, code, field):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(pb.SearchByTextRequest(text="x", feedback=feedback), timeout=10)
    assert error.value.code() == code and field in error.value.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert _details(error.value)["BadRequest"].field_violations[0].field == field


def test_with_text_adds_the_words_embedding_to_the_image_query(service):
    stub, embedder = service
    found = _ids(stub.SearchByImage(pb.SearchByImageRequest(image_id="5", with_text=" with effusion ",
                                                            top_k=IMAGES), timeout=10))
    v = _vectors()
    assert found == _ranked(v[5] + service_module.refine.WITH_TEXT_WEIGHT * v[3])
    assert embedder.texts == ["with effusion"]


def test_exclude_text_takes_the_words_embedding_from_the_text_query(service):
    stub, embedder = service
    found = _ids(stub.SearchByText(pb.SearchByTextRequest(text="effusion", exclude_text="pacemaker",
                                                          top_k=IMAGES), timeout=10))
    v = _vectors()
    assert found == _ranked(v[3] - service_module.refine.EXCLUDE_TEXT_WEIGHT * v[8])
    assert found[-1] == "8" and embedder.texts == ["effusion", "pacemaker"]


def _halves_png() -> bytes:
    """64 x 32 grey: the left half white, the right half black."""
    import io

    from PIL import Image
    pixels = np.zeros((32, 64), np.uint8)
    pixels[:, :32] = 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_a_region_of_interest_reaches_the_tower_cropped_at_the_model_s_size(service):
    stub, embedder = service
    stub.SearchByImage(pb.SearchByImageRequest(image=_halves_png()), timeout=10)
    roi = pb.RegionOfInterest(x=0.5, y=0.25, width=0.5, height=0.5)
    stub.SearchByImage(pb.SearchByImageRequest(image=_halves_png(), roi=roi), timeout=10)
    whole, cropped = embedder.pixels
    size = FakeModel().image_size
    assert whole.shape == cropped.shape == (1, size, size, 3) and cropped.dtype == np.uint8
    assert whole.min() == 0 and whole.max() == 255  # both halves
    assert cropped.max() == 0  # the right half only


@pytest.mark.parametrize("roi", [pb.RegionOfInterest(x=0.5, y=0, width=0.6, height=1),
                                 pb.RegionOfInterest(x=0, y=0, width=0, height=1),
                                 pb.RegionOfInterest(x=-0.1, y=0, width=0.5, height=0.5),
                                 pb.RegionOfInterest(x=0, y=0.2, width=0.5, height=0.9),
                                 pb.RegionOfInterest()])
def test_a_region_not_inside_the_image_is_refused_by_name(service, roi):
    stub, embedder = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image=_halves_png(), roi=roi), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error.value)["BadRequest"].field_violations[0].field == "roi"
    assert embedder.pixels == []


def test_a_region_of_an_archived_image_is_refused_with_the_remedy(service):
    stub, _ = service
    roi = pb.RegionOfInterest(x=0, y=0, width=0.5, height=0.5)
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image_id="5", roi=roi), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "upload" in error.value.details()


def _png() -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("L", (16, 16), 128).save(out, "PNG")
    return out.getvalue()


def _hit_ids(hits) -> list[str]:
    return [h.image_id for h in hits]


def test_a_dicom_query_leaves_out_its_patient_and_study_and_still_fills_top_k(service):
    stub, _ = service
    dicom = SAMPLE_DICOM.read_bytes()
    patient, study = dicom_identity(dicom)
    plain = _hit_ids(stub.SearchByImage(pb.SearchByImageRequest(image=dicom, top_k=8), timeout=10).hits)
    assert plain[0] == "5" and {"4", "6", "7"} & set(plain)  # the query's vector is image 5's
    answer = stub.SearchByImage(pb.SearchByImageRequest(image=dicom, top_k=8, exclude_same_patient=True), timeout=10)
    assert len(answer.hits) == 8 and not {"4", "5", "6", "7"} & set(_hit_ids(answer.hits))
    assert patient not in str(answer)
    both = pb.SearchByImageRequest(image=dicom, top_k=12, exclude_same_patient=True, exclude_same_study=True)
    assert sorted(_hit_ids(stub.SearchByImage(both, timeout=10).hits), key=int) == ["0", "1", "2", "3", "8", "9"]
    assert study not in str(stub.SearchByImage(both, timeout=10))


@pytest.mark.parametrize("field", ["exclude_same_patient", "exclude_same_study"])
def test_an_exclusion_asked_of_a_png_is_refused_by_name_before_decoding(service, field):
    stub, embedder = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByImage(pb.SearchByImageRequest(image=_png(), **{field: True}), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "PNG or JPEG" in error.value.details()
    assert _details(error.value)["BadRequest"].field_violations[0].field == field


def test_the_patient_of_an_archived_image_is_read_from_its_row():
    class Store:
        def image(self, image_id):
            return {"image_id": "7", "patient_id": "p1", "study_uid": "s3"} if image_id == "7" else None

    assert service_module.archived_identity(Store(), "7") == ("p1", "s3")
    with pytest.raises(ImageNotFoundError, match="not in the index"):
        service_module.archived_identity(Store(), "8")


@pytest.mark.parametrize("filters, field", [(pb.Filters(study_date_from="2020-01-01"), "filters.study_date_from"),
                                            (pb.Filters(study_date_to="20200231"), "filters.study_date_to"),
                                            (pb.Filters(study_date_from="20200301", study_date_to="20200201"),
                                             "filters.study_date_to")])
def test_a_bad_date_bound_is_refused_naming_its_field(service, filters, field):
    stub, embedder = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(pb.SearchByTextRequest(text="x", filters=filters), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error.value)["BadRequest"].field_violations[0].field == field and embedder.texts == []


def test_a_date_range_keeps_dated_images_within_it(service):
    stub, _ = service
    request = pb.SearchByTextRequest(text="x", top_k=12, filters=pb.Filters(study_date_from="20200301",
                                                                           study_date_to="20200801"))
    assert sorted(_hit_ids(stub.SearchByText(request, timeout=10).hits), key=int) == ["2", "4", "5", "6"]  # 3, 7: no date


@pytest.mark.parametrize("group", [False, True])
def test_pages_follow_on_until_the_last_which_has_no_token(service, group):
    stub, _ = service
    request = pb.SearchByTextRequest(text="x", top_k=12, group_by_study=group)
    whole = stub.SearchByText(request, timeout=10)
    paged, request.top_k, pages = [], 4 if not group else 2, 0
    while True:
        answer = stub.SearchByText(request, timeout=10)
        paged += answer.hits
        pages += 1
        if not answer.next_page_token:
            break
        request.page_token = answer.next_page_token
    assert [(h.image_id, h.study_uid, h.rank) for h in paged] == [(h.image_id, h.study_uid, h.rank) for h in whole.hits]
    assert pages == 3 and not whole.next_page_token


@pytest.mark.parametrize("change", [dict(text="y"), dict(top_k=5), dict(group_by_study=True),
                                    dict(filters=pb.Filters(labels=["Effusion"])), dict(page_token="x")])
def test_a_page_token_of_another_query_is_refused(service, change):
    stub, embedder = service
    first = stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=4), timeout=10)
    other = pb.SearchByTextRequest(text="x", top_k=4, page_token=first.next_page_token)
    if "page_token" in change:
        other.page_token = first.next_page_token[:-2] + "AA"
    else:
        for name, value in change.items():
            if isinstance(value, pb.Filters):
                other.filters.CopyFrom(value)
            else:
                setattr(other, name, value)
    embedder.texts.clear()
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(other, timeout=10)
    assert _details(error.value)["BadRequest"].field_violations[0].field == "page_token" and embedder.texts == []


def test_a_page_token_holds_for_the_same_query_however_it_is_spelled(service):
    stub, _ = service
    first = stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=4), timeout=10)
    again = pb.SearchByTextRequest(text="x", top_k=4, filters=pb.Filters(), page_token=first.next_page_token)
    assert again.HasField("filters") and len(stub.SearchByText(again, timeout=10).hits) == 4


def test_pages_end_at_the_deepest_result_allowed(service, monkeypatch):
    monkeypatch.setattr(service_module.paging, "MAX_DEPTH", 6)
    stub, _ = service
    first = stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=4), timeout=10)
    last = stub.SearchByText(pb.SearchByTextRequest(text="x", top_k=4, page_token=first.next_page_token), timeout=10)
    assert len(last.hits) == 2 and not last.next_page_token and last.hits[0].rank == 5
