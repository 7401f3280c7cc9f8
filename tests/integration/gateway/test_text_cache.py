"""The text-embedding cache: repeats skip Triton, a re-export is a miss, LRU within its size, digests
only; through a real gateway, a repeated query answers the same hits and counts as a hit."""

from dataclasses import replace
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from cxr.catalog import ExportedModel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from gateway.metrics import GatewayMetrics
from gateway.text_cache import TextEmbeddingCache
from support import SERVED, BackgroundGateway


def _model(name="m", export="sha-1"):
    text = SimpleNamespace(triton_name=f"{name}_text")
    return SimpleNamespace(name=name, text=text, manifest={"onnx": {text.triton_name: {"sha256": export}}})


def _count(metrics, kind, model="m") -> float:
    return metrics.registry.get_sample_value(f"cxr_gateway_text_cache_{kind}_total", {"model": model}) or 0.0


def test_a_repeat_is_a_hit_whatever_its_whitespace_and_is_counted():
    metrics = GatewayMetrics()
    cache = TextEmbeddingCache(8, metrics)
    assert cache.get(_model(), "small effusion") is None
    cache.put(_model(), "small effusion", np.ones(4))
    hit = cache.get(_model(), "  small\n effusion ")
    assert np.array_equal(hit, np.ones(4)) and not hit.flags.writeable
    assert (_count(metrics, "hits"), _count(metrics, "misses")) == (1, 1)


def test_another_export_or_model_does_not_share_vectors():
    cache = TextEmbeddingCache(8)
    cache.put(_model(), "effusion", np.ones(4))
    assert cache.get(_model(export="sha-2"), "effusion") is None
    assert cache.get(_model(name="other"), "effusion") is None
    assert cache.get(_model(), "Effusion") is None  # case is the tokenizer's business, not the cache's


def test_the_least_recently_used_goes_first_and_zero_turns_it_off():
    cache = TextEmbeddingCache(2)
    for text in ("a", "b"):
        cache.put(_model(), text, np.zeros(2))
    cache.get(_model(), "a")
    cache.put(_model(), "c", np.zeros(2))
    assert cache.get(_model(), "b") is None and cache.get(_model(), "a") is not None and len(cache) == 2
    off = TextEmbeddingCache(0)
    off.put(_model(), "a", np.zeros(2))
    assert off.get(_model(), "a") is None and len(off) == 0


def test_the_cache_keeps_digests_not_text():
    cache = TextEmbeddingCache(4)
    cache.put(_model(), "patient has a left pneumothorax", np.zeros(2))
    assert all(isinstance(key, bytes) and b"pneumothorax" not in key for key in cache._vectors)


@pytest.mark.triton
@pytest.mark.parametrize("name", SERVED)
def test_every_family_s_tokenizer_ignores_runs_of_whitespace(served, name):
    tokenizer = ExportedModel.load(served.model_repository, name).tokenizer
    spaced, plain = tokenizer(["Small  left\n pleural\teffusion "]), tokenizer(["Small left pleural effusion"])
    assert all(np.array_equal(spaced[k], plain[k]) for k in plain)


@pytest.mark.triton
def test_a_repeated_query_through_the_gateway_is_answered_from_the_cache(served, nih_index):
    background = BackgroundGateway(replace(served, model="medsiglip-tiny", text_cache_entries=16))
    try:
        with grpc.insecure_channel(background.address) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            first = stub.SearchByText(pb.SearchByTextRequest(text="small left pleural effusion", top_k=5))
            again = stub.SearchByText(pb.SearchByTextRequest(text="small  left pleural effusion\n", top_k=5))
        metrics = background.gateway.metrics
        assert [(h.image_id, h.score) for h in first.hits] == [(h.image_id, h.score) for h in again.hits]
        model = "medsiglip-tiny"
        assert (_count(metrics, "hits", model), _count(metrics, "misses", model)) == (1, 1)
    finally:
        background.stop()
