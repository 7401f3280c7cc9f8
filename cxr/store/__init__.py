"""The vector store: each model's image vectors and their metadata, searched by inner product.

interface.py      what the gateway and the builders see: VectorStore (search and read one build),
                  StoreBackend (where each model's builds live; opens and writes them), StoreWriter
factory.py        `backend(settings)`: the FAISS or the Milvus backend, as `index_backend` says
errors.py         why an index cannot be served or a query answered
builds.py         what every build's manifest carries, whatever the backend: its model, its id key
index_types.py    the index types and their sizes, for FAISS and Milvus alike (imports no faiss)
image_table.py    per-image metadata as memory-mapped columns (FAISS); its columns and filter check Milvus's too
faiss_*.py        the `faiss` backend: files under index_dir, searched in the gateway's process
milvus/           the `milvus` backend: a Milvus Lite file or a Milvus cluster

Importing the package loads neither faiss nor pymilvus: each backend's modules load their own.
"""
