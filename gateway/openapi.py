"""The HTTP API's OpenAPI 3.1 document, made from the route table (gateway.http_routes), the scope table
(gateway.auth) and the proto's message descriptors: each message becomes one JSON Schema under components,
written in the proto3 JSON mapping (camelCase names, 64-bit integers as strings, bytes as base64); each
operation names the scope its token needs (applied when the gateway runs with auth on)."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from gateway.auth import METHOD_SCOPES
from gateway.http_routes import ENDPOINTS, IMAGE_FIELD, IMAGE_TYPES, Endpoint, field_at

F = FieldDescriptor
INT64 = {"type": ["string", "integer"], "format": "int64"}  # JSON mapping: written as a string, read as either
SCALARS = {
    F.TYPE_STRING: {"type": "string"}, F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"}, F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"}, F.TYPE_UINT32: {"type": "integer", "minimum": 0},
    F.TYPE_FIXED32: {"type": "integer", "minimum": 0}, F.TYPE_INT64: INT64, F.TYPE_SINT64: INT64,
    F.TYPE_SFIXED64: INT64, F.TYPE_UINT64: INT64, F.TYPE_FIXED64: INT64,
    F.TYPE_FLOAT: {"type": "number", "format": "float"}, F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}
BINARY = {"type": "string", "format": "binary"}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "status", "message"], "properties": {
        "code": {"type": "integer", "description": "the HTTP status"},
        "status": {"type": "string", "description": "the gRPC status name, e.g. INVALID_ARGUMENT"},
        "message": {"type": "string"},
        "requestId": {"type": "string", "description": "as in the X-Request-Id header and the gateway's logs"},
        "details": {"type": "array", "description": "google.rpc error details, each with its @type: ErrorInfo (domain "
                    "cxr-retrieval, a stable reason), RetryInfo, BadRequest, RequestInfo",
                    "items": {"type": "object", "required": ["@type"], "properties": {"@type": {"type": "string"}},
                              "additionalProperties": True}}}}}}
HEALTH = {"type": "object", "properties": {"status": {"type": "string", "enum": ["SERVING", "NOT_SERVING", "UNKNOWN"]}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def field_schema(field: FieldDescriptor, schemas: dict) -> dict:
    """A field's JSON Schema; messages it names are added to `schemas`."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": field_schema(message.fields_by_name["value"], schemas)}
    if message is not None:
        single = message_schema(message, schemas)
    elif field.enum_type is not None:
        single = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    else:
        single = dict(SCALARS[field.type])
    return {"type": "array", "items": single} if field.is_repeated else single


def message_schema(message, schemas: dict) -> dict:
    """A $ref to the message's schema, written into `schemas` once (names are the messages' own)."""
    if message.name in schemas:
        if schemas[message.name].get("x-proto") != message.full_name:
            raise ValueError(f"two messages are named {message.name}: {message.full_name} and "
                             f"{schemas[message.name].get('x-proto')}")
        return _ref(message.name)
    schema = schemas[message.name] = {"type": "object", "x-proto": message.full_name}
    schema["properties"] = {field.json_name: field_schema(field, schemas) for field in message.fields}
    oneofs = [o for o in message.oneofs if not (len(o.fields) == 1 and o.fields[0].name == f"_{o.name}")]
    for oneof in oneofs:
        schema.setdefault("allOf", []).append(
            {"oneOf": [{"required": [field.json_name]} for field in oneof.fields]})
    return _ref(message.name)


def _parameter(endpoint: Endpoint, name: str, path: str, where: str, schemas: dict) -> dict:
    return {"name": name, "in": where, "required": where == "path",
            "schema": field_schema(field_at(endpoint.request_type, path), schemas)}


def _request_body(endpoint: Endpoint, schemas: dict) -> dict | None:
    if endpoint.body == "json":
        return {"required": True, "content": {"application/json": {"schema": message_schema(endpoint.request_type,
                                                                                              schemas)}}}
    if endpoint.body == "image":
        form = {IMAGE_FIELD: BINARY, **{name: field_schema(field_at(endpoint.request_type, path), schemas)
                                        for name, path in endpoint.params}}
        content = {kind: {"schema": BINARY} for kind in IMAGE_TYPES}
        # no body, or a form without the file, when image_id names an archived image
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": form}}
        return {"required": False, "content": content}
    return None


def operation(endpoint: Endpoint, schemas: dict) -> dict:
    parameters = [_parameter(endpoint, name, name, "path", schemas) for name in endpoint.path_fields]
    parameters += [_parameter(endpoint, name, path, "query", schemas) for name, path in endpoint.params]
    answer = ({"image/png": {"schema": BINARY}} if endpoint.raw_response
              else {"application/json": {"schema": message_schema(endpoint.response_type, schemas)}})
    result = {"operationId": endpoint.rpc, "summary": endpoint.summary, "parameters": parameters,
              "security": _security(endpoint),
              "responses": {"200": {"description": endpoint.response_type.name, "content": answer},
                            "default": {"description": "an error", "content": {"application/json": {
                                "schema": _ref("Error")}}}}}
    body = _request_body(endpoint, schemas)
    if body is not None:
        result["requestBody"] = body
    return result


def _security(endpoint: Endpoint) -> list[dict]:
    """A bearer token with the scope the route's RPC needs (gateway.auth): OpenAPI 3.1 lets a requirement of an
    http scheme list the roles it needs."""
    scope = METHOD_SCOPES[endpoint.grpc_method]
    return [{"bearer": [scope] if scope else []}]


def _open_get(summary: str, schema: dict, description: str) -> dict:
    """A GET that needs no token (health for load balancers, this document)."""
    return {"get": {"summary": summary, "security": [], "responses": {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}}}}}


def document(endpoints=ENDPOINTS) -> dict:
    schemas = {"Error": ERROR}
    paths: dict = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint, schemas)
    paths["/healthz"] = _open_get("SERVING when the model is ready in Triton and its index loaded (503 otherwise)",
                                  HEALTH, "the Retrieval service's grpc.health.v1 status")
    paths["/v1/openapi.json"] = _open_get("This document", {"type": "object"}, "OpenAPI 3.1")
    for schema in schemas.values():
        schema.pop("x-proto", None)
    return {"openapi": "3.1.0",
            "info": {"title": "cxr-retrieval HTTP/JSON API", "version": "v1",
                     "description": "The gRPC API (protos/cxr/retrieval/v1/retrieval.proto) over HTTP with JSON, "
                                    "in the proto3 JSON mapping; errors as the Error schema."},
            "paths": paths,
            "components": {"schemas": schemas,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                          "description": "a JWT or an API key"}}},
            "security": [{"bearer": []}]}
