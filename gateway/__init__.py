"""The gRPC retrieval gateway: preprocess, embed through Triton, search FAISS, answer."""
