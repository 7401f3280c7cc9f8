"""Which collection serves each model (the model's alias names it) and the manifest each collection
carries as a property."""

from __future__ import annotations

import hashlib
import json
import re

from cxr.store.milvus.connection import CALL_TIMEOUT_S, Connection
from cxr.store.milvus.schema import MANIFEST_PROPERTY

# What commits add to a build's manifest (cxr.store.milvus.changes): the last commit's number (none: 0),
# the number of the commit under way (its writes begun, its manifest not yet written), and the rows
# added and deleted since the build was written or last compacted.
GENERATION, COMMITTING, ROWS_ADDED, ROWS_DELETED = "generation", "committing", "rows_added", "rows_deleted"


def alias_of(model: str) -> str:
    """Milvus names allow letters, digits and '_': the hash keeps `a-b` and `a_b` apart."""
    readable = re.sub(r"[^0-9A-Za-z_]", "_", model)
    return f"cxr_{readable}_{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def collection_manifest(connection: Connection, collection: str) -> dict:
    """A collection's manifest property; KeyError, TypeError or ValueError when it has none readable."""
    return manifest_of(connection.call(lambda c: c.describe_collection(collection, timeout=CALL_TIMEOUT_S)))


def manifest_of(described: dict) -> dict:
    """The manifest in a collection's description (describe_collection)."""
    manifest = json.loads(described.get("properties", {})[MANIFEST_PROPERTY])
    manifest["milvus_index"]["search"]
    return manifest


def write_manifest(connection: Connection, collection: str, manifest: dict, timeout: float = CALL_TIMEOUT_S) -> None:
    """The collection's manifest property replaced, whole, in one call."""
    connection.call(lambda c: c.alter_collection_properties(collection, {MANIFEST_PROPERTY: json.dumps(manifest)},
                                                            timeout=timeout))


def serving_manifest(connection: Connection, alias: str) -> dict | None:
    """The manifest of the build in service under `alias`, if it has a readable one."""
    collection = serving_collection(connection, alias)
    try:
        return collection_manifest(connection, collection) if collection else None
    except (KeyError, TypeError, ValueError):
        return None


def serving_collection(connection: Connection, alias: str) -> str | None:
    """The collection an alias names, or None. Listing first: pymilvus logs every failed call as an error."""
    aliases = connection.call(lambda c: c.list_aliases(timeout=CALL_TIMEOUT_S))["aliases"]
    if alias not in aliases:
        return None
    return connection.call(lambda c: c.describe_alias(alias, timeout=CALL_TIMEOUT_S))["collection_name"]
