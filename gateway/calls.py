"""What the gateway's interceptors know of the call in flight, and how they wrap its handler.

grpc.aio runs every interceptor and then the handler in one contextvars.Context, so the first
interceptor (`CallInterceptor`) puts a `Call` there and the others fill it in: the principal
(auth), the deadline (admission), the outcome (audit and metrics read it).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from cxr.metadata_keys import REQUEST_ID_KEY
from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import error_details

HEALTH_PREFIX = "/grpc.health.v1.Health/"
RETRIEVAL_PREFIX = f"/{pb.DESCRIPTOR.services_by_name['Retrieval'].full_name}/"
MALFORMED = object()  # a Retrieval request whose bytes are not its message: the handler refuses it
MAX_DETAILS_CHARS = 1000  # status details travel in the trailers, which clients cap at 8 KB
# The gateway's HTTP side (gateway.http_api) calls this server over a Unix socket in a folder only
# this process's user can open, and says there who its own client is. Only calls on that socket
# are believed: the same keys from any other caller are ignored.
FORWARDED_PEER_KEY = "x-cxr-forwarded-peer"  # the HTTP client's address, as grpc writes a peer
FORWARDED_CERT_KEY = "x-cxr-forwarded-cert"  # the HTTP client's certificate subject (RFC 4514), or ""
INTERNAL_PEER_PREFIX = "unix:"


def shown(value: str, limit: int = 64) -> str:
    """A client-sent value as an error message may quote it: repr'd and clipped."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


@dataclass
class Call:
    method: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    principal: str = ""  # JWT subject, API key id, or "" when auth is off
    scopes: frozenset[str] = frozenset()
    sees_patient_data: bool = True  # False: answers carry no report and no id that could name a patient (auth)
    study_uids: list[str] = field(default_factory=list)  # the studies answered, as the index names them (audit)
    deadline: float | None = None  # time.monotonic() by which the call must end
    rejected: str = ""  # why the gateway refused it (a metrics label): "rate_limit", "unauthenticated", ...
    stages: dict[str, float] = field(default_factory=dict)  # seconds spent in decode, tokenize, triton, search

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


_CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("cxr_call", default=None)


def current() -> Call | None:
    return _CURRENT.get()


@contextlib.contextmanager
def stage(name: str):
    """Add the time spent in the block to the current call's `stages[name]`."""
    started = time.monotonic()
    try:
        yield
    finally:
        call = current()
        if call is not None:
            call.stages[name] = call.stages.get(name, 0.0) + time.monotonic() - started


def time_remaining(context) -> float | None:
    """Seconds left for this call: the client's deadline, else the gateway's default one."""
    remaining = context.time_remaining()
    if remaining is not None:
        return remaining
    call = current()
    return call.time_remaining() if call else None


def _forwarded(context, key: str) -> str | None:
    """`key` from the call's metadata when the call came in on the internal socket; else None."""
    if not context.peer().startswith(INTERNAL_PEER_PREFIX):
        return None
    return next((str(value) for name, value in context.invocation_metadata() or () if name == key), None)


def client_peer(context) -> str:
    """The client's address: the HTTP client's for calls from the gateway's HTTP side."""
    return _forwarded(context, FORWARDED_PEER_KEY) or context.peer()


def client_address(context) -> str:
    """The client's address without its port: what limits per client key on when there is no principal."""
    return client_peer(context).rsplit(":", 1)[0]


def client_subject(context) -> str:
    """The client certificate's subject ("" without one): the HTTP client's for calls from the HTTP side."""
    if context.peer().startswith(INTERNAL_PEER_PREFIX):
        return _forwarded(context, FORWARDED_CERT_KEY) or ""
    subject = context.auth_context().get("x509_subject") or [b""]
    return subject[0].decode(errors="replace")


def method_name(method: str) -> str:
    """'/cxr.retrieval.v1.Retrieval/SearchByText' -> 'SearchByText'."""
    return method.rsplit("/", 1)[-1]


Around = Callable[[Callable[[], Awaitable], object, grpc.aio.ServicerContext], Awaitable]


def wrap_unary(handler: grpc.RpcMethodHandler | None, around: Around) -> grpc.RpcMethodHandler | None:
    """`handler` with its unary-unary behaviour run as `await around(run, request, context)`.

    Streaming handlers (health Watch, reflection) are returned as they are."""
    if handler is None or handler.unary_unary is None:
        return handler
    behaviour = handler.unary_unary

    async def wrapped(request, context):
        return await around(lambda: behaviour(request, context), request, context)

    return grpc.unary_unary_rpc_method_handler(wrapped, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


async def abort(context, code: grpc.StatusCode, details: str, reason: str = "", *, retry_after_s: float | None = None,
                field: str = "", error_reason: str = "", metadata: dict[str, str] | None = None) -> None:
    """End the call with `code` and the message `details`, counted as rejected for `reason` when given. The
    trailers keep the request id and carry the google.rpc details (gateway/error_details.py): the reason is
    the refusal's label, else `error_reason`, else the code's name; RetryInfo when `retry_after_s` is known,
    BadRequest naming `field`, `metadata` in the ErrorInfo."""
    call = current()
    if call is not None and reason:
        call.rejected = reason
    if len(details) > MAX_DETAILS_CHARS:
        details = details[: MAX_DETAILS_CHARS - 15] + " ... (clipped)"
    request_id = call.request_id if call else ""
    label = (reason or (call.rejected if call else "")).upper() or error_reason or code.name
    rich = error_details.trailers(code, details, label, request_id, retry_after_s, field, metadata,
                                  context.time_remaining())
    context.set_trailing_metadata((((REQUEST_ID_KEY, request_id),) if call else ()) + rich)
    await context.abort(code, details)


def refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, details: str, reason: str,
            **rich) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with `code` before any work; `rich` as
    `abort` takes it (retry_after_s, metadata, ...)."""

    async def refuse(request, context):
        await abort(context, code, details, reason, **rich)

    async def refuse_stream(request, context):
        await refuse(request, context)
        yield  # pragma: no cover - an async generator that never yields

    kwargs = dict(request_deserializer=handler.request_deserializer if handler else None,
                  response_serializer=handler.response_serializer if handler else None)
    if handler is None or handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)


def _tolerant(deserialize):
    """Bytes that do not parse become MALFORMED, so the handler answers INVALID_ARGUMENT (grpc's own
    answer would be INTERNAL) and every interceptor still sees the call."""
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and whatever a hostile payload raises
            return MALFORMED
    return parse


class CallInterceptor(grpc.aio.ServerInterceptor):
    """First in the chain: a `Call` for every RPC, and its request id sent back to the client."""

    async def intercept_service(self, continuation, details):
        call = Call(details.method)
        _CURRENT.set(call)

        async def around(run, request, context):
            context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
            return await run()

        handler = wrap_unary(await continuation(details), around)
        if handler is not None and details.method.startswith(RETRIEVAL_PREFIX):
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        return handler
