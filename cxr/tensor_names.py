"""Names of the served tensors, shared by export, config.pbtxt and every client.

The exported ONNX graphs, the generated config.pbtxt files and the gateway all import these;
tests check that the three agree.
"""

PIXELS = "pixels"  # uint8 [batch, size, size, 3], RGB; normalisation is inside the graph
INPUT_IDS = "input_ids"  # int64 [batch, length]: the context length, or up to it (cxr.families)
ATTENTION_MASK = "attention_mask"  # int64, as input_ids; only for families that use one
IMAGE_EMBEDS = "image_embeds"  # float32 [batch, embed_dim], L2-normalised
TEXT_EMBEDS = "text_embeds"  # float32 [batch, embed_dim], L2-normalised

IMAGE_SUFFIX = "_image"
TEXT_SUFFIX = "_text"


def image_model(model: str) -> str:
    """Triton model name of a registry model's image tower."""
    return model + IMAGE_SUFFIX


def text_model(model: str) -> str:
    """Triton model name of a registry model's text tower."""
    return model + TEXT_SUFFIX
