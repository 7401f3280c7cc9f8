"""cxr_client.Client against a scripted server: gRPC's retry policy on UNAVAILABLE and RESOURCE_EXHAUSTED for
calls that change nothing, as long as the server's pushback says; one deadline per call, retries included; the
token as call credentials over TLS, over plaintext only when the caller says insecure=True; mutual TLS."""

import time

import grpc
import pytest
from scripted_server import Outcome, Scripted, status_details

import cxr_client
from cxr_client import _channel
from cxr_client._proto import retrieval_pb2 as pb

UNAVAILABLE = Outcome(grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down")


def _client(address, pki, **kwargs) -> cxr_client.Client:
    return cxr_client.Client(address, ca=pki.ca, **kwargs)


def test_unavailable_is_retried_and_the_token_goes_with_every_attempt(serve, pki):
    servicer = Scripted({"SearchByText": [UNAVAILABLE, UNAVAILABLE]})
    with _client(serve(servicer, tls=True), pki, token="t0k3n") as client:
        assert client.search_text("effusion").hits[0].image_id == "effusion"
        assert client.last_request_id == "req-3"
    assert servicer.seen == [("SearchByText", "Bearer t0k3n")] * 3


def test_a_rate_limit_is_waited_out_as_the_pushback_says(serve, pki):
    limited = Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", (("grpc-retry-pushback-ms", "300"),))
    servicer = Scripted({"SearchByText": [limited, limited]})
    with _client(serve(servicer, tls=True), pki) as client:
        started = time.monotonic()
        client.search_text("effusion")
    assert servicer.attempts("SearchByText") == 3 and time.monotonic() - started >= 0.6


def test_a_wait_past_the_deadline_is_raised_at_once_with_retry_after(serve, pki):
    limited = Outcome(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached", (
        ("grpc-retry-pushback-ms", "-1"), ("grpc-status-details-bin", status_details(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached", "RATE_LIMIT", retry_after_ms=5250))))
    servicer = Scripted({"SearchByText": [limited]})
    with _client(serve(servicer, tls=True), pki) as client, pytest.raises(cxr_client.RateLimited) as error:
        client.search_text("effusion", timeout=2)
    assert servicer.attempts("SearchByText") == 1
    assert error.value.retry_after == 5.25 and error.value.reason == "RATE_LIMIT" and error.value.request_id == "req-1"
    assert isinstance(error.value, cxr_client.ResourceExhausted)


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL])
def test_other_errors_are_not_retried(serve, pki, code):
    servicer = Scripted({"SearchByText": [Outcome(code)]})
    with _client(serve(servicer, tls=True), pki) as client, pytest.raises(cxr_client.CxrError) as error:
        client.search_text("effusion")
    assert servicer.attempts("SearchByText") == 1 and error.value.code == code


def test_deletions_are_not_retried(serve, pki):
    servicer = Scripted({"DeleteStudy": [UNAVAILABLE]})
    with _client(serve(servicer, tls=True), pki) as client, pytest.raises(cxr_client.Unavailable):
        client.delete_study("1.2.3")
    assert servicer.attempts("DeleteStudy") == 1


def test_every_rpc_is_either_retried_or_not():
    names = {method.name for method in _channel.SERVICE.methods}
    assert set(_channel.IDEMPOTENT) | set(_channel.NOT_RETRIED) == names
    assert not set(_channel.IDEMPOTENT) & set(_channel.NOT_RETRIED)


def test_the_deadline_is_the_call_s_not_each_attempt_s(serve, pki):
    slow_failures = [Outcome(grpc.StatusCode.UNAVAILABLE, "busy", delay_s=0.4) for _ in range(5)]
    servicer = Scripted({"SearchByText": slow_failures})
    with _client(serve(servicer, tls=True), pki) as client, pytest.raises(cxr_client.DeadlineExceeded):
        started = time.monotonic()
        client.search_text("effusion", timeout=1.0)
    # Each attempt given the whole second would make it 5 x 0.4 s: past 2 s.
    assert 1.0 <= time.monotonic() - started < 1.8 and servicer.attempts("SearchByText") <= 3


def test_a_server_that_never_answers_fails_at_the_deadline(serve, pki):
    servicer = Scripted({"ListModels": [Outcome(delay_s=5)]})
    with _client(serve(servicer, tls=True), pki, timeout=0.5) as client, pytest.raises(cxr_client.DeadlineExceeded):
        started = time.monotonic()
        client.list_models()
    assert time.monotonic() - started < 1.5


def test_tls_is_the_default_so_a_token_never_reaches_a_plaintext_server(serve):
    servicer = Scripted()
    address = serve(servicer)
    with cxr_client.Client(address, token="secret", max_attempts=1) as client, \
            pytest.raises(cxr_client.Unavailable) as error:
        client.search_text("effusion", timeout=5)
    assert servicer.seen == [] and "insecure=True" in str(error.value)


def test_insecure_true_sends_plaintext_and_the_token_as_metadata(serve):
    servicer = Scripted()
    with cxr_client.Client(serve(servicer), token=lambda: "fresh", insecure=True) as client:
        client.list_models()
    assert servicer.seen == [("ListModels", "Bearer fresh")]


def test_a_token_function_is_asked_at_each_call(serve, pki):
    tokens = iter(["one", "two"])
    servicer = Scripted()
    with _client(serve(servicer, tls=True), pki, token=lambda: next(tokens)) as client:
        client.list_models()
        client.list_models()
    assert [token for _, token in servicer.seen] == ["Bearer one", "Bearer two"]


def test_mutual_tls_needs_the_client_certificate(serve, pki):
    address = serve(Scripted(), tls=True, client_auth=True)
    with cxr_client.Client(address, ca=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key) as client:
        assert client.list_models().models[0].name == "cxr-mini"
    with _client(address, pki, max_attempts=1) as client, pytest.raises(cxr_client.Unavailable):
        client.list_models(timeout=5)


@pytest.mark.parametrize("kwargs, words", [
    (dict(insecure=True, ca=b"pem"), "drop insecure=True"),
    (dict(client_cert=b"pem"), "both client_cert and client_key"),
    (dict(max_attempts=0), "max_attempts"),
    (dict(max_attempts=6), "max_attempts"),
    (dict(timeout=0), "timeout"),
])
def test_a_client_set_up_wrong_is_refused_with_the_remedy(kwargs, words):
    with pytest.raises(cxr_client.ConfigurationError, match=words):
        cxr_client.Client("127.0.0.1:1", **kwargs)


def test_images_go_as_bytes_or_from_a_file_and_batches_in_order(serve, pki, tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG" + bytes(96))
    with _client(serve(Scripted(), tls=True), pki) as client:
        assert client.search_image(tmp_path / "x.png").hits[0].study_uid == "100 bytes"
        assert client.search_image(b"abc").hits[0].study_uid == "3 bytes"
        batch = client.batch_search([cxr_client.text_query("x"), cxr_client.image_query(b"y", top_k=3)])
    assert [r.model for r in batch.results] == ["text", "image"]
    with pytest.raises(TypeError, match="bytes or the path"):
        cxr_client.image_query(123)


def test_the_answers_are_the_proto_s_messages():
    assert cxr_client.messages.SearchResponse is pb.SearchResponse
