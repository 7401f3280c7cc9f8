"""Build one FAISS index per model from chest X-ray archives, encoding through Triton."""
