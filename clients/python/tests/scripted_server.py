"""A scripted Retrieval server for the client's tests: each method answers with the next outcome of its script
(an error with the gateway's trailers, a delay, or success) and notes the credential of every attempt."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc

from cxr_client import _details
from cxr_client._proto import retrieval_pb2 as pb
from cxr_client._proto import retrieval_pb2_grpc as pb_grpc


def status_details(code: grpc.StatusCode, message: str, reason: str = "", retry_after_ms: int | None = None,
                   field_name: str = "") -> bytes:
    """A google.rpc.Status as the gateway writes it, built with the client's own google.rpc messages."""
    any_type = _details.message_class("google.protobuf.Any")
    details = []

    def pack(name: str, **values):
        message = _details.message_class(f"google.rpc.{name}")(**values)
        details.append(any_type(type_url=f"type.googleapis.com/google.rpc.{name}", value=message.SerializeToString()))

    if reason:
        pack("ErrorInfo", reason=reason, domain="cxr-retrieval", metadata={"scope": "search"})
    if retry_after_ms is not None:
        duration = _details.message_class("google.protobuf.Duration")
        pack("RetryInfo", retry_delay=duration(seconds=retry_after_ms // 1000, nanos=retry_after_ms % 1000 * 10**6))
    if field_name:
        violation = _details.message_class("google.rpc.BadRequest.FieldViolation")(field=field_name,
                                                                                    description=message)
        pack("BadRequest", field_violations=[violation])
    return _details.Status(code=code.value[0], message=message, details=details).SerializeToString()


@dataclass
class Outcome:
    """One answer of the scripted server: an error (code, details, trailers) or, with code None, success."""

    code: grpc.StatusCode | None = None
    message: str = "no"
    trailers: tuple = ()
    delay_s: float = 0.0


@dataclass
class Scripted(pb_grpc.RetrievalServicer):
    """Answers each call with the next outcome of its method's script (success once a script runs out) and
    notes the authorization metadata of every attempt."""

    scripts: dict = field(default_factory=dict)
    seen: list = field(default_factory=list)  # (method, authorization or "")
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _answer(self, method: str, context, response):
        with self.lock:
            self.seen.append((method, dict(context.invocation_metadata()).get("authorization", "")))
            script = self.scripts.get(method, [])
            outcome = script.pop(0) if script else Outcome()
        time.sleep(outcome.delay_s)
        if outcome.code is None:
            context.set_trailing_metadata((("x-request-id", f"req-{len(self.seen)}"),))
            return response
        context.set_trailing_metadata((("x-request-id", f"req-{len(self.seen)}"),) + tuple(outcome.trailers))
        context.abort(outcome.code, outcome.message)

    def attempts(self, method: str) -> int:
        return sum(1 for name, _ in self.seen if name == method)

    def SearchByText(self, request, context):
        return self._answer("SearchByText", context, pb.SearchResponse(model=request.model or "m", hits=[
            pb.Hit(rank=1, study_uid="s1", image_id=request.text)]))

    def SearchByImage(self, request, context):
        return self._answer("SearchByImage", context, pb.SearchResponse(model="m", hits=[
            pb.Hit(rank=1, study_uid=f"{len(request.image)} bytes")]))

    def BatchSearch(self, request, context):
        return self._answer("BatchSearch", context, pb.BatchSearchResponse(results=[
            pb.SearchResponse(model=q.WhichOneof("query")) for q in request.queries]))

    def ListModels(self, request, context):
        return self._answer("ListModels", context, pb.ListModelsResponse(models=[pb.ModelInfo(name="cxr-mini")]))

    def DeleteStudy(self, request, context):
        return self._answer("DeleteStudy", context, pb.DeleteStudyResponse(deleted=2, generation=1))
