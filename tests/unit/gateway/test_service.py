"""RetrievalService's own logic, with no Triton: a fake embedder through the service's Embedder seam,
a real FAISS index, and the service behind a real grpc.aio server on loopback."""

import asyncio
import threading
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from cxr.images import ImageLimits
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.store import faiss_writer
from cxr.store.faiss_backend import FaissBackend
from gateway.admission import DecodeQueue
from gateway.embedding import Embedder
from gateway.indexes import IndexSet
from gateway.service import RetrievalService

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
    """Every text embeds to the vector of image 3; counts what it was asked."""

    def __init__(self):
        self.texts = []
        self.closed = False

    async def embed_texts(self, model, texts, timeout=None):
        self.texts += texts
        return np.stack([_vectors()[3]] * len(texts))

    async def embed_images(self, model, pixels, timeout=None):
        return np.stack([_vectors()[5]] * len(pixels))

    async def is_ready(self, model):
        return True

    async def close(self):
        self.closed = True


@pytest.fixture
def service(tmp_path):
    metadata = [{"image_id": str(i), "study_uid": f"s{i // 2}", "labels": ["Effusion"] if i % 3 == 0 else []}
                for i in range(IMAGES)]
    faiss_writer.write(tmp_path / MODEL, _vectors(), metadata, {"model": MODEL, "export_sha256": "a" * 64}, [], "flat")
    catalog = {MODEL: FakeModel()}
    embedder = FakeEmbedder()
    indexes = IndexSet(FaissBackend(tmp_path), catalog)
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


def test_a_text_query_returns_the_nearest_images_first(service):
    stub, embedder = service
    hits = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=4), timeout=10).hits
    assert [h.image_id for h in hits][0] == "3" and len(hits) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert embedder.texts == ["effusion"]


@pytest.mark.parametrize("request_, field", [(pb.SearchByTextRequest(text="  "), "text is empty"),
                                             (pb.SearchByTextRequest(text="x", top_k=1001), "top_k"),
                                             (pb.SearchByTextRequest(text="x", filters=pb.Filters(labels=["?"])),
                                              "label")])
def test_bad_fields_are_refused_before_anything_is_embedded(service, request_, field):
    stub, embedder = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(request_, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.value.details()
    assert embedder.texts == []


def test_an_unknown_model_is_not_found(service):
    stub, _ = service
    with pytest.raises(grpc.RpcError) as error:
        stub.SearchByText(pb.SearchByTextRequest(text="x", model="pubmed_clip"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


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


def test_get_study_and_its_absence(service):
    stub, _ = service
    study = stub.GetStudy(pb.GetStudyRequest(study_uid="s2"), timeout=10)
    assert list(study.image_ids) == ["4", "5"]
    with pytest.raises(grpc.RpcError) as error:
        stub.GetStudy(pb.GetStudyRequest(study_uid="nope"), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_models_shows_the_served_index(service):
    stub, _ = service
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert models[MODEL].active and models[MODEL].ready and models[MODEL].index_size == IMAGES
    assert not models["pubmed_clip"].exported and models["pubmed_clip"].index_size == 0
