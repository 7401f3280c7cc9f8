"""The HTTP side's error JSON carries the gRPC error's google.rpc details in the proto3 JSON mapping, and its
refusals of its own carry an ErrorInfo (and RetryInfo beside Retry-After) too."""

import json

import grpc

from gateway import error_details
from gateway.http_errors import Problem, problem_response, rpc_error_response


def _body(response) -> dict:
    return json.loads(response.body)["error"]


def test_a_rate_limited_grpc_error_keeps_its_details_and_says_retry_after():
    trailers = (("x-request-id", "r1"),) + error_details.trailers(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached", "RATE_LIMIT", "r1", retry_after_s=1.5)
    error = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                                 grpc.aio.Metadata(*trailers), "rate limit reached")
    response = rpc_error_response(error)
    body = _body(response)
    assert response.status_code == 429 and response.headers["Retry-After"] == "2"
    assert body["requestId"] == "r1" and body["status"] == "RESOURCE_EXHAUSTED"
    assert body["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT", "domain": "cxr-retrieval"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500s"},
        {"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "r1"}]


def test_a_bad_field_is_named_in_the_json():
    trailers = error_details.trailers(grpc.StatusCode.INVALID_ARGUMENT, "top_k must be ...", "INVALID_REQUEST",
                                      field="top_k")
    error = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                 "top_k must be ...")
    (violation,) = next(d for d in _body(rpc_error_response(error))["details"]
                        if d["@type"].endswith("BadRequest"))["fieldViolations"]
    assert violation == {"field": "top_k", "description": "top_k must be ..."}


def test_an_error_without_details_has_none_in_the_json():
    error = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")
    assert "details" not in _body(rpc_error_response(error))


def test_a_refusal_of_the_http_side_names_its_reason_and_wait():
    problem = Problem(429, "uploads are being received", "RESOURCE_EXHAUSTED", {"Retry-After": "2"}, "uploads")
    problem.request_id = "r2"
    details = _body(problem_response(problem))["details"]
    assert details[0] == {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "UPLOADS",
                          "domain": "cxr-retrieval"}
    assert details[1]["retryDelay"] == "2s" and details[2]["requestId"] == "r2"
    assert _body(problem_response(Problem(400, "bad JSON")))["details"][0]["reason"] == "INVALID_ARGUMENT"
