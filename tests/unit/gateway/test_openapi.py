"""The OpenAPI document: made from the route table and the proto's descriptors, complete and resolvable."""

import json
import re

from cxr.retrieval.v1 import retrieval_pb2 as pb
from gateway import openapi
from gateway.http_routes import ENDPOINTS, SERVICE


def test_every_rpc_has_a_route_and_every_route_an_operation():
    document = openapi.document()
    assert {e.rpc for e in ENDPOINTS} == {m.name for m in SERVICE.methods}, "an RPC without an HTTP route"
    for endpoint in ENDPOINTS:
        operation = document["paths"][endpoint.path][endpoint.method.lower()]
        assert operation["operationId"] == endpoint.rpc
        assert {p["name"] for p in operation["parameters"]} == {*endpoint.path_fields, *dict(endpoint.params)}


def test_every_ref_resolves_and_every_schema_is_used():
    document = openapi.document()
    schemas = document["components"]["schemas"]
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(document)))
    assert refs == set(schemas)


def test_schemas_follow_the_proto3_json_mapping():
    schemas = openapi.document()["components"]["schemas"]
    hit = schemas["Hit"]["properties"]
    assert set(hit) == {f.json_name for f in pb.Hit.DESCRIPTOR.fields}
    assert hit["imageId"] == {"type": "string"} and hit["labels"] == {"type": "array", "items": {"type": "string"}}
    assert hit["score"]["type"] == "number"
    assert schemas["ModelInfo"]["properties"]["indexSize"]["type"] == ["string", "integer"]  # int64: a string
    assert schemas["SearchByImageRequest"]["properties"]["image"]["contentEncoding"] == "base64"
    assert schemas["SearchByTextRequest"]["properties"]["filters"] == {"$ref": "#/components/schemas/Filters"}
    assert schemas["SearchQuery"]["allOf"] == [{"oneOf": [{"required": ["text"]}, {"required": ["image"]}]}]


def test_the_api_needs_a_bearer_token_but_health_does_not():
    document = openapi.document()
    assert document["openapi"] == "3.1.0" and document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["paths"]["/healthz"]["get"]["security"] == []
    image = document["paths"]["/v1/search/image"]["post"]["requestBody"]["content"]
    assert {"image/png", "application/dicom", "multipart/form-data"} <= set(image)


def test_each_operation_names_its_scope_and_deletions_need_admin():
    paths = openapi.document()["paths"]
    assert paths["/v1/studies/{study_uid}"]["delete"]["security"] == [{"bearer": ["admin"]}]
    assert paths["/v1/images/{image_id}"]["delete"]["security"] == [{"bearer": ["admin"]}]
    assert paths["/v1/studies/{study_uid}"]["get"]["security"] == [{"bearer": ["studies"]}]
    assert paths["/v1/search/text"]["post"]["security"] == [{"bearer": ["search"]}]


def test_search_answers_carry_suggestions():
    schemas = openapi.document()["components"]["schemas"]
    assert schemas["SearchResponse"]["properties"]["suggestions"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/Suggestion"}}
    assert set(schemas["Suggestion"]["properties"]) == {"label", "probability", "neighbours"}
