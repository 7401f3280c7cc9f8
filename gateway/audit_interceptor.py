"""The audit trail of the gRPC side: one line per Retrieval RPC, written before the answer leaves.

When the log cannot be written, the call fails with UNAVAILABLE instead of going unrecorded. Calls
refused as part of a flood (admission's THROTTLED) go through the log's throttle. What a line says:
gateway.audit_records; the log that writes it: gateway.audit_log; its chain: gateway.audit_chain.
"""

from __future__ import annotations

import logging

import grpc

from gateway import calls
from gateway.admission import THROTTLED
from gateway.audit_log import AuditLog
from gateway.audit_records import describe_call

log = logging.getLogger("cxr.gateway.audit")


class AuditInterceptor(grpc.aio.ServerInterceptor):
    """Writes the line after the handler and before the answer leaves: no line, no answer."""

    def __init__(self, audit: AuditLog):
        self.audit = audit

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if not details.method.startswith(calls.RETRIEVAL_PREFIX):
            return handler
        return calls.wrap_unary(handler, self._audited)

    async def _audited(self, run, request, context):
        try:
            response = await run()
        except BaseException:
            self._write(request, context, context.code() or grpc.StatusCode.CANCELLED, failed_call=True)
            raise
        if not self._write(request, context, grpc.StatusCode.OK, response):
            await calls.abort(context, grpc.StatusCode.UNAVAILABLE,
                              "the audit log cannot be written, so the gateway does not answer: an operator must "
                              "fix it (see the gateway log)", "audit")
        return response

    def _write(self, request, context, status: grpc.StatusCode, response=None, failed_call: bool = False) -> bool:
        call = calls.current()
        line = describe_call(call, context, request, status, response, self.audit)
        try:
            if call is not None and call.rejected == THROTTLED:
                self.audit.append_throttled(calls.client_address(context), line)
            else:
                self.audit.append(line)
            return True
        except OSError as exc:
            log.error("audit log %s not written (%s): request %s %s", self.audit.path, exc,
                      line["request_id"], "already failed" if failed_call else "refused (UNAVAILABLE)")
            return False
