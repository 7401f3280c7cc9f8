"""cxr_client.AsyncClient: the same retries, deadline, credentials and typed errors as Client, on grpc.aio."""

import asyncio
import time

import grpc
import pytest
from scripted_server import Outcome, Scripted, status_details

import cxr_client


def _run(coroutine):
    return asyncio.run(coroutine)


def test_retried_over_tls_with_the_token_and_answered(serve, pki):
    servicer = Scripted({"SearchByText": [Outcome(grpc.StatusCode.UNAVAILABLE)]})
    address = serve(servicer, tls=True)

    async def search():
        async with cxr_client.AsyncClient(address, ca=pki.ca, token="t0k3n") as client:
            answers = await asyncio.gather(client.search_text("a"), client.search_text("b"))
            return [a.hits[0].image_id for a in answers], client.last_request_id

    ids, request_id = _run(search())
    assert ids == ["a", "b"] and request_id.startswith("req-")
    assert servicer.seen == [("SearchByText", "Bearer t0k3n")] * 3


def test_errors_are_typed_with_the_field_at_fault(serve, pki):
    bad = Outcome(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between 1 and 1000", (
        ("grpc-status-details-bin", status_details(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be between 1 and 1000",
                                                   "INVALID_REQUEST", field_name="top_k")),))
    address = serve(Scripted({"SearchByText": [bad]}), tls=True)

    async def search():
        async with cxr_client.AsyncClient(address, ca=pki.ca) as client:
            await client.search_text("x", top_k=5000)

    with pytest.raises(cxr_client.InvalidArgument) as error:
        _run(search())
    assert error.value.field_violations == (cxr_client.FieldViolation("top_k", "top_k must be between 1 and 1000"),)
    assert error.value.reason == "INVALID_REQUEST" and error.value.domain == "cxr-retrieval"


def test_a_server_that_never_answers_fails_at_the_deadline(serve, pki):
    address = serve(Scripted({"ListModels": [Outcome(delay_s=5)]}), tls=True)

    async def expect():
        async with cxr_client.AsyncClient(address, ca=pki.ca, timeout=0.5) as client:
            with pytest.raises(cxr_client.DeadlineExceeded):
                await client.list_models()

    started = time.monotonic()
    _run(expect())
    assert time.monotonic() - started < 1.5
