"""cxr-retrieval: chest X-ray retrieval served by NVIDIA Triton."""

__version__ = "0.1.0"
