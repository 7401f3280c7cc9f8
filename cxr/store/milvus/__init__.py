"""The `milvus` backend: one model's index as a Milvus collection, in a Milvus Lite file
(milvus_uri = indexes/milvus.db) or a Milvus cluster (http://host:19530); the same client and code.

<alias>              cxr_<model>_<hash>: names the collection in service. A rebuild fills a new
                     collection and moves the alias onto it in one step, then drops the old one.
<alias>__<built>     one build: id (row position 0..n-1, as in FAISS; an image a commit adds is keyed by
                     its image id, at 2**62 and up), vector (COSINE), the metadata columns of
                     cxr.store.image_table, and lower-cased copies of projection and labels that filters
                     match (filters ignore case)
  cxr.manifest       a collection property: the build's manifest (model, export, dim, count, index type,
                     created, distinct labels and projections), written before the alias moves; each
                     commit then rewrites it (count, labels, projections, generation, rows pending)

A store searches the collection it was opened on, never the alias: its manifest, its filter values
and the rows it reads belong to one build even while the alias moves. Commits change that collection
in place; every search and query reads at Strong, so the next one of any process sees them.

Milvus Lite 3.2 (pure Python, in the process that opens the file) builds FLAT, HNSW, IVF_FLAT and
IVF_SQ8 and supports aliases, collection properties and array_contains_any. It accepts IVF_PQ but
never builds it (it searches unindexed), so `ivfpq` is refused there. It serves a file to one
process at a time, and forgets which collections were loaded when that process ends.

connection.py   one client per backend, connected again after the server went away
schema.py       a collection's fields and limits, and Milvus's index for each of our index types
filters.py      a query's Filter as a Milvus filter expression
aliases.py      which collection serves each model, and the manifest each collection carries
records.py      rows as records within the fields' limits, and the key of an image a commit adds
store.py        MilvusStore: searches and reads one build's collection
writer.py       MilvusWriter: fills a new collection and moves the alias onto it
changes.py      commits to the collection in service, and its compaction
backend.py      MilvusBackend: the StoreBackend over one Milvus
"""
