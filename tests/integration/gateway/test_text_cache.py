"""The text-embedding cache through a real gateway on real Triton: every family's tokenizer ignores runs
of whitespace, and a repeated query answers the same hits and counts as a hit."""

from dataclasses import replace

import grpc
import numpy as np
import pytest

from cxr.catalog import ExportedModel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from support import SERVED, BackgroundGateway


def _count(metrics, kind, model="m") -> float:
    return metrics.registry.get_sample_value(f"cxr_gateway_text_cache_{kind}_total", {"model": model}) or 0.0


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
