"""Page tokens: the next page of a search is the same query asked again with the token of the previous
answer, which says where the next page starts.

A token is base64url of {"o": offset, "s": signature}: the signature is an HMAC, under the served index's
key (VectorStore.signature, from the id key in its manifest), of the offset and of the query's fingerprint
(model, top_k, filters, group_by_study, exclusions and the query's content: every field but page_token).
So a token is refused when it comes with another query, from another index, or was edited; and it works
on every replica serving the index, and across restarts, with no state kept. It holds no query data.
Pages end at MAX_DEPTH results: a caller cannot make the gateway fetch more than that for one query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from gateway.request_errors import InvalidRequestError

MAX_DEPTH = 1000  # the deepest result a page reaches (the largest top_k)
PURPOSE = "page-token"
SIGNATURE_BYTES = 16
FIELD = "page_token"


def fingerprint(model: str, request) -> bytes:
    """What identifies a query across its pages: the model and every request field but page_token."""
    query = type(request)()
    query.CopyFrom(request)
    query.ClearField(FIELD)
    for field, value in query.ListFields():  # an empty message set means what it unset does (HTTP leaves it unset)
        if field.message_type is not None and not field.is_repeated and not value.ByteSize():
            query.ClearField(field.name)
    return hashlib.sha256(model.encode() + b"\0" + query.SerializeToString(deterministic=True)).digest()


def token(store, query: bytes, offset: int) -> str:
    document = {"o": offset, "s": _signature(store, query, offset)}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def offset_of(store, query: bytes, page_token: str) -> int:
    """Where the page of `page_token` starts (0 without one); a token not issued for this query is refused."""
    if not page_token:
        return 0
    try:
        document = json.loads(base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4)))
        offset, signature = document["o"], document["s"]
        valid = type(offset) is int and 0 < offset < MAX_DEPTH and isinstance(signature, str) \
            and hmac.compare_digest(signature, _signature(store, query, offset))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        valid = False
    if not valid:
        raise InvalidRequestError("page_token is not one this gateway gave for this query: send the "
                                  "next_page_token of the previous answer, with every other field unchanged", FIELD)
    return offset


def _signature(store, query: bytes, offset: int) -> str:
    signed = store.signature(PURPOSE, query + offset.to_bytes(4, "big"))
    return base64.urlsafe_b64encode(signed[:SIGNATURE_BYTES]).decode().rstrip("=")
