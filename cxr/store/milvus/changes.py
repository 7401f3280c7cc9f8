"""Commits to the collection in service (MilvusBackend.apply), and its compaction.

A commit deletes the images of a Change by image id and by study, then upserts its rows under keys
derived from their image ids (records.image_key), so that adding an image again replaces it in
place; rows of those images that a build wrote under position ids are deleted first. The collection's
manifest then says what the collection holds now (count, labels, projections) and the commit's number.
Every process's next Strong read (connection.READ_CONSISTENCY) sees the writes.

Milvus has no transactions: a commit cut short (Milvus gone mid-way) leaves part of its writes done.
Each step can be done again (a delete of rows already gone, an upsert of the same key), so the
follower's retry of the same change completes it; until then the manifest marks the commit under way
(COMMITTING), and a store opened meanwhile counts the rows it finds rather than trust the manifest.
One writer per model (the follower): the manifest is read, changed and written back.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import numpy as np

from cxr.store.builds import check_change
from cxr.store.interface import Change, Committed
from cxr.store.milvus.aliases import (
    COMMITTING,
    GENERATION,
    ROWS_ADDED,
    ROWS_DELETED,
    collection_manifest,
    write_manifest,
)
from cxr.store.milvus.connection import BUILD_TIMEOUT_S, CALL_TIMEOUT_S, READ_CONSISTENCY, Connection
from cxr.store.milvus.filters import literal
from cxr.store.milvus.records import MilvusLimitError, RecordBuilder, batches, image_key
from cxr.store.milvus.schema import ID

log = logging.getLogger("cxr.milvus_store")  # the name before the package: log settings may name it

VALUES_PER_FILTER = 256  # image ids, studies or keys per filter expression: each up to 512 bytes
WRITE_TIMEOUT_S = 60.0  # one delete or upsert request of a commit
COMPACT_WAIT_S = 600.0
COMPACT_POLL_S = 0.5


def commit(connection: Connection, collection: str, manifest: dict, change: Change, where: str) -> Committed:
    """Apply `change` to `collection` (whose manifest is `manifest`), then write its manifest."""
    check_change(where, manifest, change)
    generation = int(manifest.get(GENERATION, 0))
    builder = RecordBuilder()
    latest = {str(row["image_id"]): i for i, row in enumerate(change.rows)}  # a second row of an image wins
    vectors = None if change.vectors is None else np.ascontiguousarray(change.vectors, np.float32)
    records = [builder.record(image_key(image_id), vectors[i], change.rows[i], f"row {i} of the change")
               for image_id, i in latest.items()]  # every row checked before anything is written
    doomed = {**_matching(connection, collection, "image_id", change.image_ids),
              **_matching(connection, collection, "study_uid", change.study_uids)}
    present = _present(connection, collection, list(latest), doomed)
    if not doomed and not latest:
        return Committed(generation)  # a deletion that finds nothing writes no commit, as with FAISS
    stale = [key for key, image_id in present.items() if key != image_key(image_id)]
    replaced = set(present.values())

    write_manifest(connection, collection, dict(manifest, **{COMMITTING: generation + 1}))
    _delete(connection, collection, "image_id", change.image_ids)
    _delete(connection, collection, "study_uid", change.study_uids)
    _delete(connection, collection, ID, stale)
    for batch in batches(records):
        connection.call(lambda c: c.upsert(collection, batch, timeout=WRITE_TIMEOUT_S))

    committed = Committed(generation + 1, added=len(latest) - len(replaced), replaced=len(replaced),
                          deleted=len(set(doomed.values())))  # images, as FAISS counts them
    updated = {name: value for name, value in manifest.items() if name != COMMITTING}
    updated.update({
        "count": live_count(connection, collection), GENERATION: committed.generation,
        "labels": list(dict.fromkeys([*manifest["labels"], *builder.labels])),
        "projections": list(dict.fromkeys([*manifest["projections"], *builder.projections])),
        # An upsert over a key deletes its old row, as a delete does: both weigh on searches until compacted.
        ROWS_ADDED: manifest.get(ROWS_ADDED, 0) + len(latest),
        ROWS_DELETED: manifest.get(ROWS_DELETED, 0) + len(doomed) + len(present),
        "data_bytes": manifest.get("data_bytes", 0) + builder.bytes,
        "truncated_reports": manifest.get("truncated_reports", 0) + builder.truncated})
    write_manifest(connection, collection, updated)
    return committed


def pending_rows(manifest: dict) -> int:
    return int(manifest.get(ROWS_ADDED, 0)) + int(manifest.get(ROWS_DELETED, 0))


def compact(connection: Connection, collection: str, manifest: dict, where: str) -> dict:
    """Milvus's own compaction of the collection, waited for, and its manifest's counters of rows
    added and deleted taken down by what they were when it began.

    Nothing is rewritten here, unlike FAISS's base index: a Milvus collection is already immutable
    sealed segments, small growing ones and delete records, and compaction (merging segments and
    dropping deleted rows, which Milvus also starts by itself) is Milvus's own background work that
    searches go on reading through."""
    # Compaction merges sealed segments: a flush seals the growing ones that hold the last commits.
    connection.call(lambda c: c.flush(collection, timeout=BUILD_TIMEOUT_S))
    job = connection.call(lambda c: c.compact(collection, timeout=CALL_TIMEOUT_S))
    _wait_compacted(connection, collection, job, where)
    current = collection_manifest(connection, collection)  # commits of another writer meanwhile stay pending
    compacted = dict(current, **{ROWS_ADDED: max(0, current.get(ROWS_ADDED, 0) - manifest.get(ROWS_ADDED, 0)),
                                 ROWS_DELETED: max(0, current.get(ROWS_DELETED, 0) - manifest.get(ROWS_DELETED, 0))},
                     compacted=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    write_manifest(connection, collection, compacted)
    return compacted


def live_count(connection: Connection, collection: str) -> int:
    """The rows a search can find now: Milvus's statistics count deleted rows until compaction."""
    answer = connection.call(lambda c: c.query(collection, filter="", output_fields=["count(*)"],
                                               consistency_level=READ_CONSISTENCY, timeout=CALL_TIMEOUT_S))
    return int(answer[0]["count(*)"])


def _matching(connection: Connection, collection: str, field: str, values) -> dict[int, str]:
    """The keys and image ids of the rows whose `field` is one of `values`."""
    found: dict[int, str] = {}
    for chunk in _chunks(values):
        found.update(_query_keys(connection, collection, _in(field, chunk)))
    return found


def _present(connection: Connection, collection: str, image_ids: list[str], doomed: dict[int, str]) -> dict[int, str]:
    """The rows of these images that the commit's deletes leave, by key; refusing an image whose key
    another image holds (two in 10**7 at a million images: the odds of 62 bits)."""
    keys = {image_key(image_id): image_id for image_id in image_ids}
    if len(keys) < len(image_ids):
        raise _collision(sorted(set(image_ids) - set(keys.values()))[0])
    present: dict[int, str] = {}
    for chunk in _chunks(image_ids):
        expression = f"{_in('image_id', chunk)} or {_in(ID, [image_key(image_id) for image_id in chunk])}"
        for key, image_id in _query_keys(connection, collection, expression).items():
            if key in doomed:
                continue
            if key in keys and keys[key] != image_id:
                raise _collision(keys[key])
            present[key] = image_id
    return present


def _collision(image_id: str) -> MilvusLimitError:
    return MilvusLimitError(f"image {image_id[:80]!r} has the same Milvus key as another image of the index, which a "
                            "commit cannot add beside it: delete the other image first, or use the faiss backend")


def _query_keys(connection: Connection, collection: str, expression: str) -> dict[int, str]:
    records = connection.call(lambda c: c.query(collection, filter=expression, output_fields=[ID, "image_id"],
                                                consistency_level=READ_CONSISTENCY, timeout=CALL_TIMEOUT_S))
    return {int(record[ID]): str(record["image_id"]) for record in records}


def _delete(connection: Connection, collection: str, field: str, values) -> None:
    for chunk in _chunks(values):
        connection.call(lambda c: c.delete(collection, filter=_in(field, chunk), timeout=WRITE_TIMEOUT_S))


def _in(field: str, values) -> str:
    return f"{field} in [{', '.join(literal(v) if isinstance(v, str) else str(int(v)) for v in values)}]"


def _chunks(values) -> list[list]:
    values = list(dict.fromkeys(values))
    return [values[start:start + VALUES_PER_FILTER] for start in range(0, len(values), VALUES_PER_FILTER)]


def _wait_compacted(connection: Connection, collection: str, job: int, where: str) -> None:
    deadline = time.monotonic() + COMPACT_WAIT_S
    while connection.call(lambda c: c.get_compaction_state(job, timeout=CALL_TIMEOUT_S)) == "Executing":
        if time.monotonic() > deadline:
            log.warning("%s: Milvus is still compacting %s after %.0f s; it goes on by itself", where, collection,
                        COMPACT_WAIT_S)
            return
        time.sleep(COMPACT_POLL_S)
