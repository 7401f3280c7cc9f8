"""The request message of an HTTP call: a JSON body in the proto3 JSON mapping, or an uploaded image
(the raw body, or a multipart part) with the other fields as query parameters or form fields; an image
search by an archived image's image_id has no body (or a form without the file part).

Anything that does not fit the message is refused (400) with the reason, before any gRPC call:
malformed JSON, a key given twice, an unknown field, a parameter that is not a number. A body larger
than its route allows gets 413 without being read further: an upload route (an image, a batch) takes a
full gRPC message, the others SMALL_BODY_BYTES. JSON is counted before it is parsed, so that a small body
cannot become gigabytes of Python objects. Errors name fields and limits, never the values sent.
"""

from __future__ import annotations

import asyncio
import json
import re

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from starlette.datastructures import UploadFile
from starlette.requests import Request

from gateway.http_errors import Problem
from gateway.http_routes import ARCHIVED_FIELD, IMAGE_FIELD, IMAGE_TYPES, Endpoint, field_at

MAX_FORM_FIELDS = 64
MAX_FORM_PART_BYTES = 64 * 1024  # a form field other than the image: a model name, a label
SMALL_BODY_BYTES = 1 << 20  # a text query (10,000 characters at most), its filters and options
# JSON values allowed in a body, counted as its commas, brackets and braces: a full batch of 256 queries
# with filters has a few thousand; `[{},{},...]` in 85 MB has 28 million, ~2.4 GB as Python objects. A
# body is parsed in a worker thread (json_format is pure Python: 20,000 values take ~0.3 s), never on the
# event loop that every other client's call runs on.
MAX_JSON_VALUES = 20_000
INTEGERS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
BOOLEANS = {"true": True, "1": True, "false": False, "0": False, "": False}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,39}")  # a field or parameter name an error may quote


def body_limit(endpoint: Endpoint, max_message_bytes: int) -> int:
    """Bytes of body read at most: for uploads a full message, as base64 inside JSON (4/3 larger), and
    some room; for the rest, SMALL_BODY_BYTES."""
    return max_message_bytes * 4 // 3 + 2**20 if endpoint.uploads else SMALL_BODY_BYTES


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def named(name: str) -> str:
    """A client-sent field name as an error may quote it: only when it reads as a name."""
    return repr(name) if NAME.fullmatch(name) else "(a name that is not one)"


def too_large(limit: int) -> Problem:
    # The rest of the body is not read: the connection ends with the answer.
    return Problem(413, f"the body is larger than {limit / 2**20:g} MB, this route's limit: send the original image "
                        "file (PNG, JPEG or DICOM) or a smaller request", headers={"Connection": "close"})


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit` bytes and (408) when it
    has not all arrived within `timeout_s`. A client that goes away mid-body raises ClientDisconnect."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()  # one growing copy: chunks joined at the end would be a second
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise too_large(limit)
                body += chunk
    except TimeoutError:
        raise Problem(408, f"the body did not arrive within {timeout_s:g} s (http_body_timeout_s)",
                      headers={"Connection": "close"}) from None
    return bytes(body)


def _unique_keys(pairs: list) -> dict:
    """json.loads' object hook: a key given twice is refused (the last would win unseen)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise Problem(400, f"the key {named(twice)} is given more than once in one JSON object")
    return document


def parse_json(body: bytes) -> object:
    """The JSON document of a body, counted before it is parsed (MAX_JSON_VALUES)."""
    values = body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > MAX_JSON_VALUES:
        raise Problem(400, f"the JSON body holds more than {MAX_JSON_VALUES} values, more than any request needs")
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON ({type(exc).__name__}): check its syntax") from exc


def json_message(body: bytes, descriptor):
    """The message `descriptor` from a JSON body; 400 naming what is wrong."""
    name = descriptor.name
    document = parse_json(body)
    if not isinstance(document, dict):
        raise Problem(400, f"the body must be a JSON object (a {name}), not {type(document).__name__}")
    try:
        return json_format.ParseDict(document, message_factory.GetMessageClass(descriptor)(),
                                     ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise Problem(400, f"the body is not a valid {name}: {_parse_fault(exc)}") from exc


def _parse_fault(error: Exception) -> str:
    """json_format's message without the values it quotes ('Couldn't parse integer: "<value>"')."""
    text = str(error)
    unknown = re.search(r'has no field named "([^"]*)"', text)
    if unknown:
        return f"it has no field named {named(unknown.group(1))} (the OpenAPI document lists the fields)"
    failed = re.match(r"Failed to parse (\w+) field", text)
    if failed:
        return f"the field {named(failed.group(1))} has a value of the wrong type or range"
    return "a field has a value of the wrong type (the OpenAPI document lists the fields and their types)"


def _value(field: FieldDescriptor, name: str, text: str):
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text.lower() not in BOOLEANS:
            raise Problem(400, f"{name} must be true or false")
        return BOOLEANS[text.lower()]
    if field.type in INTEGERS:
        try:
            return int(text)
        except ValueError:
            raise Problem(400, f"{name} must be an integer") from None
    if field.type in FLOATS:
        try:
            return float(text)
        except ValueError:
            raise Problem(400, f"{name} must be a number") from None
    return text


def set_params(message, endpoint: Endpoint, items: list[tuple[str, str]]) -> None:
    """Path parameters, then query parameters (or form fields), into their request fields."""
    known = dict(endpoint.params, **{name: name for name in endpoint.path_fields})
    seen = set()
    for name, text in items:
        if name not in known:
            raise Problem(400, f"unknown parameter {named(name)}: {endpoint.path} takes {sorted(known)}")
        *parents, leaf = known[name].split(".")
        target = message
        for parent in parents:
            target = getattr(target, parent)
        field = field_at(message.DESCRIPTOR, known[name])
        value = _value(field, name, text)
        try:
            if field.is_repeated:
                getattr(target, leaf).append(value)
            elif name in seen:
                raise Problem(400, f"{name} is given more than once; it takes one value")
            else:
                setattr(target, leaf, value)
        except (ValueError, TypeError) as exc:
            raise Problem(400, f"{name} is out of range for its field") from exc
        seen.add(name)


async def _form_image(request: Request, body: bytes, items: list[tuple[str, str]]) -> bytes:
    """The `image` part of a multipart body; its other fields are appended to `items`."""
    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1, max_fields=MAX_FORM_FIELDS,
                                                     max_part_size=MAX_FORM_PART_BYTES)
    try:
        image = None
        for name, value in form.multi_items():
            if name == IMAGE_FIELD and isinstance(value, UploadFile):
                image = await value.read()
            elif isinstance(value, str):
                items.append((name, value))
            else:
                raise Problem(400, f"the file part {named(name)} is not expected: send the image as '{IMAGE_FIELD}'")
        if image is None and not any(name == ARCHIVED_FIELD for name, _ in items):
            raise Problem(400, f"the form has no file part named '{IMAGE_FIELD}': add the image there, or name an "
                               f"archived image in '{ARCHIVED_FIELD}'")
        return image or b""
    finally:
        await form.close()


async def image_message(request: Request, endpoint: Endpoint, body: bytes, message) -> None:
    """The image of a raw body (typed by Content-Type) or of a multipart form, and its parameters."""
    items = list(request.query_params.multi_items())
    kind = media_type(request)
    if kind == "multipart/form-data":
        image = await _form_image(request, body, items)
    elif kind in IMAGE_TYPES or not body:  # no body: an archived image's image_id, or the service refuses
        image = body
    else:
        raise Problem(415, "the Content-Type is not an image upload: send the file as "
                           f"{', '.join(IMAGE_TYPES)} or multipart/form-data with a part named 'image'")
    setattr(message, IMAGE_FIELD, image)
    set_params(message, endpoint, items)


async def request_message(request: Request, endpoint: Endpoint, max_message_bytes: int, body_timeout_s: float):
    """The gRPC request of an HTTP call to `endpoint`."""
    descriptor = endpoint.request_type
    body = await read_body(request, body_limit(endpoint, max_message_bytes), body_timeout_s) if endpoint.body else b""
    if endpoint.body == "json":
        if media_type(request) != "application/json":
            raise Problem(415, f"send the {descriptor.name} as JSON, with Content-Type: application/json")
        message = await asyncio.to_thread(json_message, body, descriptor)
        set_params(message, endpoint, list(request.query_params.multi_items()))
    else:
        message = message_factory.GetMessageClass(descriptor)()
        if endpoint.body == "image":
            await image_message(request, endpoint, body, message)
        else:
            set_params(message, endpoint, list(request.query_params.multi_items()))
    set_params(message, endpoint, list(request.path_params.items()))
    if message.ByteSize() > max_message_bytes:
        raise Problem(413, f"the request is {message.ByteSize() / 2**20:.0f} MB, more than the gateway's message "
                           f"limit of {max_message_bytes / 2**20:.0f} MB")
    return message
