"""The HTTP/JSON API (/v1/...), /healthz, the search page (/) and its sign-in (/auth/..., gateway.http_login):
a Starlette app that transcodes
each HTTP call into a call to the gateway's own gRPC server, as grpc-gateway or Envoy's gRPC-JSON
transcoder do. The call goes over an internal Unix socket, so it passes the same interceptors
(request id, metrics, audit, auth and scopes, admission) and the same service code as a gRPC
client's; the HTTP client's address and certificate subject travel with it (gateway.calls).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import grpc
from google.protobuf import json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cxr.settings import is_loopback
from gateway import calls, http_login, openapi
from gateway.http_admission import Caller, FrontDoor
from gateway.http_errors import API_HEADERS, Problem, error_response, problem_response, rpc_error_response, trailer
from gateway.http_messages import request_message
from gateway.http_routes import ENDPOINTS, SERVICE, Endpoint

log = logging.getLogger("cxr.gateway.http")

STATIC_DIR = Path(__file__).parent / "static"
THUMBNAIL_CACHE = "private, max-age=3600"  # patient data: the browser may keep it, shared caches never
HEALTH_TIMEOUT_S = 5.0
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Cross-Origin-Resource-Policy: another site's page cannot embed the answers (a thumbnail in an <img>).
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"content-security-policy", CSP.encode()),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                    (b"cross-origin-resource-policy", b"same-origin"))
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Upstream:
    """The gateway's own gRPC server, reached over its internal Unix socket."""

    def __init__(self, target: str, deadline_s: float, max_message_bytes: int):
        self.target = target
        self.deadline_s = deadline_s
        self.max_message_bytes = max_message_bytes
        self.channel: grpc.aio.Channel | None = None
        self.methods: dict = {}

    async def open(self) -> None:
        """Opened on the serving loop: a grpc.aio channel belongs to the loop it was made on."""
        limit = self.max_message_bytes
        self.channel = grpc.aio.insecure_channel(self.target, options=[("grpc.max_send_message_length", limit),
                                                                       ("grpc.max_receive_message_length", limit)])
        for method in SERVICE.methods:
            response_type = message_factory.GetMessageClass(method.output_type)
            self.methods[method.name] = self.channel.unary_unary(
                f"/{SERVICE.full_name}/{method.name}", request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_type.FromString)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def call(self, rpc: str, message, metadata: tuple) -> tuple[object, tuple]:
        """(response, trailing metadata); a failed call raises grpc.aio.AioRpcError."""
        call = self.methods[rpc](message, metadata=metadata, timeout=self.deadline_s)
        response = await call
        return response, await call.trailing_metadata()

    async def health(self) -> str:
        """The Retrieval service's grpc.health.v1 status name; UNKNOWN when the server does not answer."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        try:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE.full_name),
                                      timeout=HEALTH_TIMEOUT_S)
        except grpc.aio.AioRpcError:
            return "UNKNOWN"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def _metadata(request: Request, caller: Caller, door: FrontDoor) -> tuple:
    """The HTTP client's address, certificate subject and credential (its Authorization header or its
    sign-in session), for the gRPC side's interceptors."""
    metadata = [(calls.FORWARDED_PEER_KEY, caller.peer), (calls.FORWARDED_CERT_KEY, caller.subject)]
    credential = door.credential(request)
    if credential is not None:
        if not (credential.isascii() and credential.isprintable()):
            raise Problem(401, "the Authorization header must read 'Bearer <token>' in plain ASCII",
                          "UNAUTHENTICATED", {"WWW-Authenticate": "Bearer"})
        metadata.append(("authorization", credential))
    return tuple(metadata)


def _answer(endpoint: Endpoint, response, trailers) -> Response:
    request_id = trailer(trailers, calls.REQUEST_ID_KEY)
    if endpoint.raw_response:
        return Response(response.data, media_type=response.media_type or "application/octet-stream",
                        headers={"Cache-Control": THUMBNAIL_CACHE, "X-Request-Id": request_id})
    return JSONResponse(json_format.MessageToDict(response), headers=dict(API_HEADERS, **{"X-Request-Id": request_id}))


def _handler(endpoint: Endpoint, upstream: Upstream, door: FrontDoor, body_timeout_s: float):
    async def handle(request: Request) -> Response:
        started, caller = time.monotonic(), Caller.of(request.scope)
        try:
            door.admit(request, endpoint.rpc, caller)  # before any byte of the body is read
            async with door.upload_slot(endpoint.uploads):
                message = await request_message(request, endpoint, upstream.max_message_bytes, body_timeout_s)
                response, trailers = await upstream.call(endpoint.rpc, message, _metadata(request, caller, door))
            return _answer(endpoint, response, trailers)
        except Problem as problem:
            door.refused(caller, endpoint.rpc, problem, started)
            raise  # answered by the app's exception handler
        except ClientDisconnect:  # nobody to answer: one line, no traceback
            log.info("HTTP %s %s: the client went away before its request was read", request.method, endpoint.rpc)
            return Response(status_code=400)
        except (HTTPException, grpc.aio.AioRpcError):
            raise  # answered by the app's exception handlers
        except Exception as error:  # noqa: BLE001 - the safety net: logged here, never by uvicorn with its message
            return _unexpected(request, error)

    return handle


def _health(upstream: Upstream):
    async def healthz(request: Request) -> Response:
        status = await upstream.health()
        return JSONResponse({"status": status}, status_code=200 if status == "SERVING" else 503, headers=API_HEADERS)

    return healthz


def _openapi_route(document: dict):
    async def serve(request: Request) -> Response:
        return JSONResponse(document, headers=API_HEADERS)

    return serve


def _http_exception(door: FrontDoor):
    async def answer(request: Request, exc: HTTPException) -> Response:
        """Starlette's own refusals (no route, wrong method, unreadable form) in the API's error shape; those
        of the API (not of the page's static files) are recorded like the HTTP side's own."""
        problem = Problem(exc.status_code, exc.detail, headers=dict(exc.headers or {}))
        if request.url.path.startswith("/v1/"):
            door.refused(Caller.of(request.scope), "", problem, time.monotonic())
        return problem_response(problem)

    return answer


async def _rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> Response:
    return rpc_error_response(exc)


async def _problem(request: Request, exc: Problem) -> Response:
    return problem_response(exc)


def _unexpected(request: Request, error: Exception) -> Response:
    # The type and the frames, not the message or the path: either may quote the query or a study.
    log.error("HTTP %s: unexpected %s\n%s", request.method, type(error).__name__,
              "".join(traceback.format_tb(error.__traceback__)))
    return error_response(500, "INTERNAL", "internal error; the gateway logged it")


class HttpGuard:
    """Every answer says: do not sniff types, run only this origin's scripts, send no referrer, no framing,
    no embedding by other sites. Before any route, it refuses (and records, through the front door):
    - a request with both Content-Length and Transfer-Encoding (RFC 9112 6.3: a smuggling attempt or a
      broken proxy), closing the connection;
    - a request that changes state (POST, DELETE) from another web origin: a page elsewhere could otherwise
      make a clinician's browser run searches, or an administrator's delete, with its credentials or,
      without auth, on loopback;
    - without auth (loopback only), a request addressed to a name other than a loopback one, so a web page
      whose name an attacker points at 127.0.0.1 (DNS rebinding) cannot read the answers."""

    def __init__(self, app, door: FrontDoor, loopback_names_only: bool):
        self.app = app
        self.door = door
        self.loopback_names_only = loopback_names_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((name, value) for name, value in SECURITY_HEADERS if name not in present)]
            await send(message)

        problem = self._fault(scope)
        if problem is not None:
            self.door.refused(Caller.of(scope), "", problem, time.monotonic())
            return await problem_response(problem)(scope, receive, send_secured)
        await self.app(scope, receive, send_secured)

    def _fault(self, scope) -> Problem | None:
        headers = _headers(scope)
        if b"content-length" in headers and b"transfer-encoding" in headers:
            return Problem(400, "a request may carry Content-Length or Transfer-Encoding, not both",
                           headers={"Connection": "close"})
        if scope["method"] not in SAFE_METHODS and not _same_origin(scope, headers):
            return Problem(403, "a request from another web origin is refused: open the search page from this "
                                "gateway, or call the API without a browser", "PERMISSION_DENIED")
        if self.loopback_names_only and not is_loopback(_host_name(headers)):
            return Problem(421, "this gateway runs without auth, so it answers only requests addressed to localhost "
                                "or a loopback address: open it that way, or turn auth on to serve it under another "
                                "name", "PERMISSION_DENIED")
        return None


def _headers(scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", [])}


def _host_name(headers: dict[bytes, bytes]) -> str:
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    return host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]


def _same_origin(scope, headers: dict[bytes, bytes]) -> bool:
    """No Origin (not a browser, or a same-origin request of an older one), or this gateway's own."""
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    return origin.decode("latin-1").strip().lower() == f"{scope.get('scheme', 'http')}://{host}"


def create_app(upstream: Upstream, door: FrontDoor, loopback_names_only: bool = False,
               body_timeout_s: float = 60.0, login: http_login.Login | None = None) -> HttpGuard:
    api = [Route(e.path.removeprefix("/v1"), _handler(e, upstream, door, body_timeout_s), methods=[e.method])
           for e in ENDPOINTS]
    api.append(Route("/openapi.json", _openapi_route(openapi.document()), methods=["GET"]))
    app = Starlette(routes=[Mount("/v1", routes=api), Route("/healthz", _health(upstream), methods=["GET"]),
                            Mount("/auth", routes=http_login.routes(login, door)),
                            Mount("/", StaticFiles(directory=STATIC_DIR, html=True, check_dir=False))],
                    exception_handlers={HTTPException: _http_exception(door), grpc.aio.AioRpcError: _rpc_error,
                                        Problem: _problem})
    return HttpGuard(app, door, loopback_names_only)
