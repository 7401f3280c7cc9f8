"""The synchronous client (cxr_client.Client); the asyncio one is cxr_client.aio.AsyncClient."""

from __future__ import annotations

from typing import Optional

import grpc

from cxr_client._channel import DEFAULT_TIMEOUT_S, MAX_ATTEMPTS, Connection, FileOrBytes, Token
from cxr_client._methods import Methods
from cxr_client._proto import retrieval_pb2_grpc as pb_grpc
from cxr_client.errors import REQUEST_ID_KEY, ConfigurationError, from_rpc_error


def request_id(trailing_metadata) -> str:
    return next((str(value) for key, value in trailing_metadata or () if key == REQUEST_ID_KEY), "")


class BaseClient(Methods):
    """What Client and AsyncClient share: the connection, the deadline, the last request id."""

    def __init__(self, address: str, *, ca: FileOrBytes = None, client_cert: FileOrBytes = None,
                 client_key: FileOrBytes = None, token: Optional[Token] = None, insecure: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S, wait_for_ready: bool = False, max_attempts: int = MAX_ATTEMPTS,
                 server_name: Optional[str] = None, options=()):
        if not timeout > 0:
            raise ConfigurationError(f"timeout is the seconds a call may take, more than 0; not {timeout}")
        self.connection = Connection(address, ca, client_cert, client_key, token or None, insecure, server_name,
                                     max_attempts, tuple(options))
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.last_request_id = ""
        self._channel = self._open()
        self._stub = pb_grpc.RetrievalStub(self._channel)

    def _open(self):
        raise NotImplementedError

    def _deadline(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else timeout


class Client(BaseClient):
    """A client of the cxr-retrieval gateway.

        with Client("cxr.hospital.example:50051", ca="ca.pem", token=token) as client:
            for hit in client.search_text("small left pleural effusion", top_k=5).hits:
                print(hit.study_uid, hit.score)

    - TLS always, unless `insecure=True` (plaintext: only for a gateway on loopback or a trusted network).
      `ca`: the CA of the gateway's certificate (a PEM file's path, or its bytes); None: the system's roots.
      `client_cert` and `client_key`: mutual TLS. `server_name`: the name to expect in the gateway's
      certificate when `address` is not one of its names.
    - `token`: a JWT or an API key, or a function returning the current one (called at each call), sent as
      call credentials (`authorization: Bearer ...`) over TLS; over plaintext only with insecure=True.
    - `timeout`: each call's deadline in seconds, retries included (a method's `timeout` overrides it).
    - Retries are gRPC's own (its service config): calls that change nothing are retried on UNAVAILABLE and
      RESOURCE_EXHAUSTED, with backoff or as long as the gateway's rate limit says, up to `max_attempts`
      attempts (1: none), never past the deadline. Deletions are not retried.
    - `wait_for_ready=True`: a call waits for the gateway to be reachable, until its deadline (rides out a
      restart or a rolling update); False (the default): it fails within seconds (Unavailable) when the
      gateway cannot be reached.
    Errors are cxr_client.errors' types (CxrError and its subclasses), with the gateway's details.
    `last_request_id`: the gateway's id of the last call answered (quote it when reporting a problem).
    """

    def _open(self):
        return self.connection.sync_channel()

    def _call(self, rpc: str, request, timeout: Optional[float]):
        try:
            response, call = getattr(self._stub, rpc).with_call(
                request, timeout=self._deadline(timeout), metadata=self.connection.call_metadata(),
                wait_for_ready=self.wait_for_ready)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        self.last_request_id = request_id(call.trailing_metadata())
        return response

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
