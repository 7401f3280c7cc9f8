"""The asyncio client: Client's methods, each returning an awaitable.

    async with AsyncClient("cxr.hospital.example:50051", ca="ca.pem", token=token) as client:
        answers = await asyncio.gather(*(client.search_text(t) for t in texts))

Create it inside the event loop that uses it (grpc.aio channels belong to one loop).
"""

from __future__ import annotations

from typing import Optional

import grpc

from cxr_client.client import BaseClient, request_id
from cxr_client.errors import from_rpc_error


class AsyncClient(BaseClient):
    """As Client (same arguments, same retries, deadline and credentials), on grpc.aio."""

    def _open(self):
        return self.connection.aio_channel()

    async def _call(self, rpc: str, request, timeout: Optional[float]):
        call = getattr(self._stub, rpc)(request, timeout=self._deadline(timeout),
                                        metadata=self.connection.call_metadata(), wait_for_ready=self.wait_for_ready)
        try:
            response = await call
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        self.last_request_id = request_id(await call.trailing_metadata())
        return response

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
