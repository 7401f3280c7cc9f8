"""The gateway answers the same from Milvus as from FAISS: a Milvus Lite collection holding the vectors
and rows of the NIH FAISS flat index, behind a second real gateway (index_backend = "milvus"), gives
the same top 10 for every validation image and label prompt, with and without filters."""

from dataclasses import replace

import grpc
import numpy as np
import pytest

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install pymilvus milvus-lite)")
pytest.importorskip("milvus_lite", reason="these tests run Milvus Lite (pip install milvus-lite)")

from benchmarks.retrieval_quality import validation_records  # noqa: E402
from cxr.retrieval.v1 import retrieval_pb2 as pb  # noqa: E402
from cxr.retrieval.v1 import retrieval_pb2_grpc  # noqa: E402
from cxr.store import faiss_store  # noqa: E402
from support import DATA_DIR, BackgroundGateway, MilvusLiteFile  # noqa: E402
from support.dicom_query import PATIENT, patients, query_dicom  # noqa: E402
from training.data import humanise, label_prompt  # noqa: E402

pytestmark = pytest.mark.triton
GATEWAY_MODEL = "medsiglip-tiny"  # the model of the session's nih_index
K = 10


@pytest.fixture(scope="module")
def milvus_gateway(served, nih_index, tmp_path_factory):
    """A second gateway, serving the nih index's own vectors and rows from a Milvus Lite file."""
    store = faiss_store.load(nih_index)
    vectors, rows = store.index.reconstruct_n(0, store.count), store.rows(range(store.count))
    manifest = {key: store.manifest.get(key) for key in ("model", "export_sha256", "source")}
    path = tmp_path_factory.mktemp("milvus") / "milvus.db"
    with MilvusLiteFile(path) as backend:
        backend.write(GATEWAY_MODEL, vectors, rows, manifest, [], "flat")
        background = BackgroundGateway(replace(served, model=GATEWAY_MODEL, index_backend="milvus",
                                               milvus_uri=str(path)))
        try:
            yield background.address, store
        finally:
            background.stop()


@pytest.fixture(scope="module")
def stubs(gateway, milvus_gateway):
    with grpc.insecure_channel(gateway) as faiss, grpc.insecure_channel(milvus_gateway[0]) as milvus:
        yield retrieval_pb2_grpc.RetrievalStub(faiss), retrieval_pb2_grpc.RetrievalStub(milvus)


def _queries(store) -> list[tuple[str, object]]:
    """Every validation image, alone and frontal only; every label as prompt and bare, alone and as filter."""
    images = [record.path.read_bytes() for record in validation_records(DATA_DIR)]
    frontal = pb.Filters(projections=["Frontal"])
    queries = [("image", pb.SearchByImageRequest(image=image, top_k=K)) for image in images]
    queries += [("image", pb.SearchByImageRequest(image=image, top_k=K, filters=frontal)) for image in images[::4]]
    for label in store.labels:
        for text in (label_prompt(label), humanise(label)):
            queries.append(("text", pb.SearchByTextRequest(text=text, top_k=K)))
            queries.append(("text", pb.SearchByTextRequest(text=text, top_k=K, filters=pb.Filters(labels=[label]))))
    return queries


def _ask(stub, kind: str, request) -> list[tuple[str, float]]:
    call = stub.SearchByImage if kind == "image" else stub.SearchByText
    return [(hit.image_id, hit.score) for hit in call(request, timeout=60).hits]


def test_every_validation_query_gets_the_same_top_10_from_both_backends(stubs, milvus_gateway):
    faiss, milvus = stubs
    queries = _queries(milvus_gateway[1])
    differing = []
    for position, (kind, request) in enumerate(queries):
        expected, found = _ask(faiss, kind, request), _ask(milvus, kind, request)
        assert expected  # a label on fewer than K images gives fewer hits, from both
        same_ids = [i for i, _ in found] == [i for i, _ in expected]
        if not (same_ids and np.allclose([s for _, s in found], [s for _, s in expected], atol=1e-4)):
            differing.append((position, kind, expected, found))
    assert not differing, f"{len(differing)} of {len(queries)} queries differ; first: {differing[0]}"
    assert len(queries) > 150


def test_the_milvus_gateway_describes_its_index_and_finds_studies(stubs):
    faiss, milvus = stubs
    infos = [{m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}[GATEWAY_MODEL] for stub in stubs]
    assert [(i.index_size, i.index_type, i.ready) for i in infos] == [(800, "flat", True)] * 2
    assert infos[1].index_bytes > 800 * infos[1].embed_dim * 4
    hit = milvus.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=1)).hits[0]
    assert milvus.GetStudy(pb.GetStudyRequest(study_uid=hit.study_uid)) == \
        faiss.GetStudy(pb.GetStudyRequest(study_uid=hit.study_uid))
    with pytest.raises(grpc.RpcError) as error:
        milvus.SearchByText(pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=["Unicorn"])))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "it has" in error.value.details()
    assert "Unicorn" not in error.value.details()


def test_the_query_s_patient_is_left_out_by_milvus_as_by_faiss(stubs):
    owner = patients()
    pages = []
    for stub in stubs:
        request = pb.SearchByImageRequest(image=query_dicom(), top_k=10, exclude_same_patient=True,
                                          filters=pb.Filters(projections=["Frontal"]))
        first = stub.SearchByImage(request, timeout=60)
        request.page_token = first.next_page_token
        pages.append([hit.image_id for hit in [*first.hits, *stub.SearchByImage(request, timeout=60).hits]])
    assert pages[0] == pages[1] and len(pages[0]) == 20 and all(owner[i] != PATIENT for i in pages[0])


def test_a_deletion_on_the_milvus_gateway_is_gone_from_its_next_search(stubs):
    """Last in this module: it changes the collection the tests above compare."""
    _, milvus = stubs
    query = pb.SearchByTextRequest(text=label_prompt("Cardiomegaly"), top_k=50)
    first = milvus.SearchByText(query, timeout=60).hits
    study, image = first[0].study_uid, first[1].image_id
    answer = milvus.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), timeout=60)
    assert answer.deleted >= 1 and answer.generation == 1
    image_study = next(hit.study_uid for hit in first if hit.image_id == image)
    if image_study != study:
        assert milvus.DeleteImage(pb.DeleteImageRequest(image_id=image), timeout=60).deleted == 1
    after = milvus.SearchByText(query, timeout=60).hits
    assert study not in {hit.study_uid for hit in after} and image not in {hit.image_id for hit in after}
    with pytest.raises(grpc.RpcError) as again:
        milvus.DeleteStudy(pb.DeleteStudyRequest(study_uid=study), timeout=60)
    assert again.value.code() == grpc.StatusCode.NOT_FOUND
