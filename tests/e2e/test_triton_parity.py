"""Embeddings served by a real Triton over gRPC equal the PyTorch model's on the same inputs."""

import numpy as np
import pytest
import torch

from cxr.images import load_pixels
from cxr.registry import get_model
from cxr.towers import towers
from cxr.triton_client import TowerClient, connection
from support import SERVED, cosine

PARITY = 0.9999


def torch_image_embeds(encoder, spec, pixels: np.ndarray) -> np.ndarray:
    """The reference: the checkpoint's own forward on normalised float pixels, as users run it."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    if spec.image_normalization == "per_image":
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        x = x / torch.sqrt(x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-2 / 255**2)
    else:
        x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    return encoder.image_features(x).numpy()


def torch_text_embeds(encoder, spec, tokens: dict) -> np.ndarray:
    return encoder.text_features(*[torch.from_numpy(tokens[n]) for n in spec.text_inputs]).numpy()


@pytest.fixture(scope="module")
def clients(served):
    made = {name: TowerClient(connection(served), *towers(get_model(name)),
                              get_model(name).batching.max_batch_size) for name in SERVED}
    yield made
    for client in made.values():
        client.close()


@pytest.mark.triton
@pytest.mark.parametrize("tower", ["image", "text"])
@pytest.mark.parametrize("name", SERVED)
def test_served_tower_matches_pytorch(name, tower, clients, encoders, xray_paths, report_texts):
    spec, encoder, client = get_model(name), encoders[name], clients[name]
    if tower == "image":
        pixels = load_pixels(xray_paths, spec.image_size)
        served, reference = client.embed_images(pixels), torch_image_embeds(encoder, spec, pixels)
    else:
        tokens = encoder.tokenize(report_texts)
        served, reference = client.embed_texts(tokens), torch_text_embeds(encoder, spec, tokens)
    assert served.shape == (len(reference), spec.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert cosine(served, reference).min() >= PARITY


@pytest.mark.triton
def test_different_texts_give_different_embeddings(clients, encoders, report_texts):
    """Guards the parity tests against a tower that ignores its input."""
    for name in SERVED:
        served = clients[name].embed_texts(encoders[name].tokenize(report_texts[:3]))
        assert cosine(served[:1], served[1:2])[0] < 0.9999, name
