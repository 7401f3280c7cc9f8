"""Each interceptor alone, over real gRPC on loopback, in front of a fake Retrieval service.

The fake answers SearchByText after `top_k` milliseconds, so tests can hold calls in flight."""

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from cxr.metadata_keys import RETRY_AFTER_KEY
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import auth, calls
from gateway.admission import AdmissionInterceptor, Limits, RateLimiter, RefusalLimiter
from gateway.errors import grpc_errors
from gateway.metrics import GatewayMetrics, MetricsInterceptor


class SlowService(pb_grpc.RetrievalServicer):
    @grpc_errors
    async def SearchByText(self, request, context):
        if request.text.endswith("crash"):
            raise ZeroDivisionError(f"a bug that quotes the query: {request.text}")
        with calls.stage("triton"):
            await asyncio.sleep(request.top_k / 1000)
        return pb.SearchResponse(model="fake", hits=[pb.Hit(rank=1, study_uid="s1", findings="small effusion",
                                                            impression="no acute disease")])


class Server:
    """A grpc.aio server with `interceptors` on its own loop in a thread."""

    def __init__(self, interceptors):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def start():
            server = grpc.aio.server(interceptors=interceptors)
            pb_grpc.add_RetrievalServicer_to_server(SlowService(), server)
            health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.RetrievalStub(self.channel)

    def run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def close(self):
        self.channel.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def make_server():
    made = []

    def make(*interceptors):
        made.append(Server([calls.CallInterceptor(), *interceptors]))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _search(stub, milliseconds=1, **kwargs):
    return stub.SearchByText.with_call(pb.SearchByTextRequest(text="effusion", top_k=milliseconds), **kwargs)


def test_calls_beyond_the_concurrency_cap_are_refused(make_server):
    server = make_server(AdmissionInterceptor(Limits(max_concurrent_rpcs=2, rate_per_s=0)))
    slow = [server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=800)) for _ in range(2)]
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as error:
        _search(server.stub)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_concurrent_rpcs" in error.value.details()
    assert all(f.result().model == "fake" for f in slow)
    assert _search(server.stub)[0].model == "fake"  # room again


def test_the_rate_limit_says_when_to_retry(make_server):
    server = make_server(AdmissionInterceptor(Limits(rate_per_s=1.0, burst=3)))
    for _ in range(3):
        _search(server.stub)
    with pytest.raises(grpc.RpcError) as error:
        _search(server.stub)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(error.value.trailing_metadata())
    assert 0 < int(trailers[RETRY_AFTER_KEY]) <= 1000 and len(trailers[calls.REQUEST_ID_KEY]) == 32


def test_a_call_without_a_deadline_gets_the_default_one(make_server):
    server = make_server(AdmissionInterceptor(Limits(default_deadline_s=0.2, rate_per_s=0)))
    with pytest.raises(grpc.RpcError) as error:
        _search(server.stub, milliseconds=2000)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "default deadline" in error.value.details()
    assert _search(server.stub, milliseconds=2000, timeout=5)[0].model == "fake"  # its own deadline wins


def test_draining_refuses_new_calls_and_waits_for_those_in_flight(make_server):
    admission = AdmissionInterceptor(Limits(rate_per_s=0))
    server = make_server(admission)
    in_flight = server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=600))
    time.sleep(0.2)
    admission.drain()
    with pytest.raises(grpc.RpcError) as error:
        _search(server.stub)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.value.details()
    assert server.run(admission.wait_idle(5)) is True
    assert in_flight.result().model == "fake"
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # health is never refused by admission


def test_an_unforeseen_error_is_internal_with_a_request_id_and_no_internals(make_server, caplog):
    server = make_server()
    with pytest.raises(grpc.RpcError) as error:
        server.stub.SearchByText(pb.SearchByTextRequest(text="patient jane roe crash", top_k=1))
    assert error.value.code() == grpc.StatusCode.INTERNAL
    request_id = dict(error.value.trailing_metadata())[calls.REQUEST_ID_KEY]
    assert request_id in error.value.details() and "ZeroDivision" not in error.value.details()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert request_id in logged and "ZeroDivisionError" in logged and "jane roe" not in logged


def test_metrics_count_calls_by_method_status_and_stage_without_patient_data(make_server):
    metrics = GatewayMetrics()
    server = make_server(MetricsInterceptor(metrics), AdmissionInterceptor(Limits(rate_per_s=1.0, burst=1)))
    _search(server.stub, milliseconds=5)
    with pytest.raises(grpc.RpcError):
        _search(server.stub)
    from prometheus_client import generate_latest

    rejected = 'cxr_gateway_rpcs_total{code="RESOURCE_EXHAUSTED",method="SearchByText"} 1.0'
    deadline = time.monotonic() + 5
    while rejected not in (text := generate_latest(metrics.registry).decode()) and time.monotonic() < deadline:
        time.sleep(0.01)  # the status reaches the client before the server's wrapper has counted it
    assert 'cxr_gateway_rpcs_total{code="OK",method="SearchByText"} 1.0' in text
    assert rejected in text
    assert 'cxr_gateway_rejected_rpcs_total{reason="rate_limit"} 1.0' in text
    assert 'cxr_gateway_stage_seconds_count{method="SearchByText",stage="triton"} 1.0' in text
    assert 'cxr_gateway_stage_seconds_count{method="SearchByText",stage="total"} 2.0' in text
    assert "effusion" not in text


class TokenPerScopes:
    """An authenticator whose tokens are their scopes, comma-separated."""

    def verify(self, token):
        return auth.Principal("someone", "jwt", frozenset(token.split(",")))


class SeenByTheService(grpc.aio.ServerInterceptor):
    """After auth: what the service will read of the call."""

    def __init__(self):
        self.seen = []

    async def intercept_service(self, continuation, details):
        async def around(run, request, context):
            self.seen.append(calls.current().sees_patient_data)
            return await run()

        return calls.wrap_unary(await continuation(details), around)


def test_only_the_studies_scope_may_see_patient_data(make_server):
    seen = SeenByTheService()
    server = make_server(auth.AuthInterceptor(TokenPerScopes()), seen)
    for scopes in ("search", "search,studies", "search,admin"):
        _search(server.stub, metadata=(("authorization", f"Bearer {scopes}"),))
    assert seen.seen == [False, True, False]


class PrincipalFromMetadata(grpc.aio.ServerInterceptor):
    """Stands in for auth: the caller's principal is its `x-principal` metadata."""

    async def intercept_service(self, continuation, details):
        call = calls.current()
        call.principal = dict(details.invocation_metadata or ()).get("x-principal", "")
        return await continuation(details)


def test_one_client_cannot_hold_every_slot(make_server):
    server = make_server(PrincipalFromMetadata(),
                         AdmissionInterceptor(Limits(max_concurrent_rpcs=10, max_concurrent_per_client=2,
                                                     rate_per_s=0)))
    alice = (("x-principal", "alice"),)
    slow = [server.stub.SearchByText.future(pb.SearchByTextRequest(text="x", top_k=800), metadata=alice)
            for _ in range(2)]
    time.sleep(0.3)
    with pytest.raises(grpc.RpcError) as error:
        _search(server.stub, metadata=alice)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per client" in error.value.details()
    assert _search(server.stub, metadata=(("x-principal", "bob"),))[0].model == "fake"
    assert all(f.result().model == "fake" for f in slow)
    assert _search(server.stub, metadata=alice)[0].model == "fake"  # alice's slots are free again


class RefuseAllButGood:
    def verify(self, token):
        if token != "good":
            raise auth.AuthError("not a credential this test accepts")
        return auth.Principal("good", "api_key", frozenset({"search"}))


def test_an_address_whose_calls_keep_being_refused_is_throttled_before_auth(make_server):
    server = make_server(RefusalLimiter(RateLimiter(rate_per_s=0.5, burst=3)), auth.AuthInterceptor(RefuseAllButGood()))
    bad = (("authorization", "Bearer forged"),)
    codes = []
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as error:
            _search(server.stub, metadata=bad)
        codes.append(error.value.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert "refused calls" in error.value.details() and int(dict(error.value.trailing_metadata())[RETRY_AFTER_KEY]) > 0
    with pytest.raises(grpc.RpcError) as error:  # the address is throttled whatever it sends now
        _search(server.stub, metadata=(("authorization", "Bearer good"),))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_accepted_calls_cost_an_address_nothing(make_server):
    server = make_server(RefusalLimiter(RateLimiter(rate_per_s=0.5, burst=1)), auth.AuthInterceptor(RefuseAllButGood()))
    for _ in range(5):
        assert _search(server.stub, metadata=(("authorization", "Bearer good"),))[0].model == "fake"
