"""The request message of an HTTP call: a JSON body in the proto3 JSON mapping, or an uploaded image
(the raw body, or a multipart part) with the other fields as query parameters or form fields.

Anything that does not fit the message is refused (400) with the reason, before any gRPC call:
malformed JSON, an unknown field, a parameter that is not a number. A body larger than the gRPC
message limit gets 413 without being read further.
"""

from __future__ import annotations

import json

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from starlette.datastructures import UploadFile
from starlette.requests import Request

from gateway.calls import shown
from gateway.http_errors import Problem
from gateway.http_routes import IMAGE_FIELD, IMAGE_TYPES, Endpoint, field_at

MAX_FORM_FIELDS = 64
MAX_FORM_PART_BYTES = 64 * 1024  # a form field other than the image: a model name, a label
INTEGERS = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
BOOLEANS = {"true": True, "1": True, "false": False, "0": False, "": False}


def body_limit(max_message_bytes: int) -> int:
    """Bytes of body read at most: a full message, as base64 inside JSON (4/3 larger), and some room."""
    return max_message_bytes * 4 // 3 + 2**20


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed `limit` bytes."""
    too_large = Problem(413, f"the body is larger than {limit / 2**20:.0f} MB, the gateway's limit: send the "
                             "original image file (PNG, JPEG or DICOM), not a raw dump",
                         headers={"Connection": "close"})  # the rest of the body is not read: end the connection
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def json_message(body: bytes, descriptor):
    """The message `descriptor` from a JSON body; 400 naming what is wrong."""
    name = descriptor.name
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Problem(400, f"the body is not valid JSON ({exc}): send a {name} object") from exc
    if not isinstance(document, dict):
        raise Problem(400, f"the body must be a JSON object (a {name}), not {type(document).__name__}")
    try:
        return json_format.ParseDict(document, message_factory.GetMessageClass(descriptor)(),
                                     ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise Problem(400, f"the body is not a valid {name}: {exc}") from exc


def _value(field: FieldDescriptor, name: str, text: str):
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text.lower() not in BOOLEANS:
            raise Problem(400, f"{name} must be true or false, not {shown(text)}")
        return BOOLEANS[text.lower()]
    if field.type in INTEGERS:
        try:
            return int(text)
        except ValueError:
            raise Problem(400, f"{name} must be an integer, not {shown(text)}") from None
    return text


def set_params(message, endpoint: Endpoint, items: list[tuple[str, str]]) -> None:
    """Path parameters, then query parameters (or form fields), into their request fields."""
    known = dict(endpoint.params, **{name: name for name in endpoint.path_fields})
    seen = set()
    for name, text in items:
        if name not in known:
            raise Problem(400, f"unknown parameter {shown(name)}: {endpoint.path} takes {sorted(known)}")
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
            raise Problem(400, f"{name}: {exc}") from exc
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
                raise Problem(400, f"the file part {shown(name)} is not expected: send the image as '{IMAGE_FIELD}'")
        if image is None:
            raise Problem(400, f"the form has no file part named '{IMAGE_FIELD}': add the image there")
        return image
    finally:
        await form.close()


async def image_message(request: Request, endpoint: Endpoint, body: bytes, message) -> None:
    """The image of a raw body (typed by Content-Type) or of a multipart form, and its parameters."""
    items = list(request.query_params.multi_items())
    kind = media_type(request)
    if kind == "multipart/form-data":
        image = await _form_image(request, body, items)
    elif kind in IMAGE_TYPES:
        image = body
    else:
        raise Problem(415, f"Content-Type {shown(kind)} is not an image upload: send the file as "
                           f"{', '.join(IMAGE_TYPES)} or multipart/form-data with a part named 'image'")
    setattr(message, IMAGE_FIELD, image)
    set_params(message, endpoint, items)


async def request_message(request: Request, endpoint: Endpoint, max_message_bytes: int):
    """The gRPC request of an HTTP call to `endpoint`."""
    descriptor = endpoint.request_type
    body = await read_body(request, body_limit(max_message_bytes)) if endpoint.body else b""
    if endpoint.body == "json":
        if media_type(request) != "application/json":
            raise Problem(415, f"send the {descriptor.name} as JSON, with Content-Type: application/json")
        message = json_message(body, descriptor)
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
