"""A build's collection: its fields and their limits, and Milvus's index for each of our index types
(cxr.store.index_types), with its build and search parameters."""

from __future__ import annotations

from pymilvus import DataType, MilvusClient

from cxr.store import index_types
from cxr.store.image_table import TEXT_COLUMNS

ID, VECTOR, PROJECTION_KEY, LABEL_KEYS = "id", "vector", "projection_key", "label_keys"
ROW_FIELDS = [ID, *TEXT_COLUMNS, "projection", "labels"]
STORED_FIELDS = [*ROW_FIELDS, VECTOR, PROJECTION_KEY, LABEL_KEYS]  # a whole row, as an upsert rewrites it
MANIFEST_PROPERTY = "cxr.manifest"
METRIC = "COSINE"  # the vectors are L2-normalised: the same order and scores as FAISS's inner product

# An identifier cut short would name another image or study, so a longer one is refused; report
# text is cut at Milvus's VARCHAR limit (UTF-8 bytes, which Milvus counts) and the cuts are counted.
FIELD_BYTES = {"image_id": 512, "study_uid": 512, "patient_id": 256, "filename": 1024, "path": 4096,
               "projection": 256, "study_instance_uid": 64, "series_instance_uid": 64, "sop_instance_uid": 64,
               "accession_number": 64, "study_date": 16, "view_position": 64, "patient_name": 1024}  # DICOM VR limits
REPORT_COLUMNS = ("findings", "impression", "indication")
REPORT_BYTES = 65_535
LABEL_BYTES = 256
MAX_LABELS = 256

MILVUS_INDEX = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "sq8": "IVF_SQ8", "ivfpq": "IVF_PQ"}
LITE_UNBUILT = ("IVF_PQ",)
# pymilvus 3 sends build parameters as top-level keys; Milvus Lite 3.2 reads them only from a "params"
# key, so it builds with its defaults (HNSW M=16, efConstruction=200; IVF 128 lists, fewer on small
# segments). Search parameters do reach it.
LITE_IVF_NLIST = 128
HNSW_MAX_EF = 32_768  # the beam of the second search of a query a narrow filter left short
HNSW_EF_CONSTRUCTION = 200  # built once per sealed segment in the background: a better graph costs no query time


def cut(text: str, limit: int) -> tuple[str, bool]:
    """At most `limit` UTF-8 bytes, never half a character; and whether it was cut."""
    data = text.encode()
    return (text, False) if len(data) <= limit else (data[:limit].decode(errors="ignore"), True)


def report_fields(report) -> dict:
    """A StudyReport (cxr.store.interface) as the fields of its study's rows."""
    labels = [label for label in report.labels if len(label.encode()) <= LABEL_BYTES][:MAX_LABELS]
    return {"findings": cut(report.findings, REPORT_BYTES)[0], "impression": cut(report.impression, REPORT_BYTES)[0],
            "labels": labels, LABEL_KEYS: [label.lower() for label in labels]}


def collection_schema(dim: int):
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    for name in TEXT_COLUMNS:
        schema.add_field(name, DataType.VARCHAR, max_length=FIELD_BYTES.get(name, REPORT_BYTES))
    for name in ("projection", PROJECTION_KEY):
        schema.add_field(name, DataType.VARCHAR, max_length=FIELD_BYTES["projection"])
    for name in ("labels", LABEL_KEYS):
        schema.add_field(name, DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=MAX_LABELS,
                         max_length=LABEL_BYTES)
    return schema


def index_params(spec: dict, lite: bool):
    params = MilvusClient.prepare_index_params()
    params.add_index(VECTOR, index_type=spec["type"], metric_type=METRIC, params=spec["build"])
    # Milvus Lite has no scalar index on arrays; a cluster filters labels faster with one.
    for name in ("study_uid", PROJECTION_KEY) + (() if lite else (LABEL_KEYS,)):
        params.add_index(name, index_type="INVERTED")
    return params


def index_spec(index_type: str, dim: int, count: int, lite: bool) -> dict:
    """Milvus's index for our index type: its build parameters, and its search parameters for a
    normal and for an exhaustive search (IVF: every list, so that a narrow filter hides no match)."""
    if index_type not in MILVUS_INDEX:
        raise ValueError(f"index type {index_type!r} has no Milvus counterpart: use one of {sorted(MILVUS_INDEX)} "
                         "with the milvus backend (opq exists only in FAISS)")
    kind = MILVUS_INDEX[index_type]
    if lite and kind in LITE_UNBUILT:
        raise ValueError(f"Milvus Lite cannot build {kind} (--index-type {index_type}): it would search unindexed. "
                         "Use sq8 for a compact index, or a Milvus cluster")
    if kind == "FLAT":
        return {"type": kind, "build": {}, "search": {}, "exhaustive": None}
    if kind == "HNSW":
        return {"type": kind, "build": {"M": index_types.HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
                "search": {"ef": index_types.HNSW_EF_SEARCH},
                "exhaustive": {"ef": max(index_types.HNSW_EF_SEARCH, min(count, HNSW_MAX_EF))}}
    nlist = index_types.nlist_for(count)
    build = {"nlist": nlist}
    if kind == "IVF_PQ":
        # FAISS's choices for the same index (index_types keeps them); Milvus needs dim % m == 0 too.
        build.update(m=index_types.pq_codes(dim), nbits=index_types.pq_bits(count))
    lists = max(nlist, LITE_IVF_NLIST) if lite else nlist
    return {"type": kind, "build": build, "search": {"nprobe": min(index_types.IVF_NPROBE, nlist)},
            "exhaustive": {"nprobe": lists}}


def search_params(params: dict, k: int) -> dict:
    if "ef" in params:
        params = dict(params, ef=max(params["ef"], k))  # Milvus refuses ef < k
    return {"metric_type": METRIC, "params": params}
