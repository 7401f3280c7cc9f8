"""Embeddings served by a real Triton over gRPC equal the PyTorch model's on the same inputs.

Texts go through the served tokenizer as the gateway sends them: padded to the longest text of the
call where the family allows it (cxr.families), and padded again by the python model to
the longest request of each batch Triton gathers; the reference is the checkpoint's own tokenisation
(padded to the context length) through PyTorch.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from cxr.catalog import ExportedModel
from cxr.images import load_pixels
from cxr.registry import get_model
from cxr.towers import towers
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient
from support import SERVED, cosine, triton_counts

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
    made = {name: TowerClient(connections(served), *towers(get_model(name)),
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


@pytest.fixture(scope="module")
def served_tokenizers(served):
    return {name: ExportedModel.load(served.model_repository, name).tokenizer for name in SERVED}


def _served_text_parity(name, texts, clients, encoders, served_tokenizers) -> np.ndarray:
    spec, encoder = get_model(name), encoders[name]
    tokens = served_tokenizers[name](texts)
    served = clients[name].embed_texts(tokens)
    reference = torch_text_embeds(encoder, spec, encoder.tokenize(texts))
    assert served.shape == (len(texts), spec.embed_dim)
    return cosine(served, reference)


@pytest.mark.triton
@pytest.mark.parametrize("name", SERVED)
def test_a_short_text_is_sent_at_its_own_length_and_matches_pytorch(name, clients, encoders, served_tokenizers):
    spec = get_model(name)
    width = served_tokenizers[name](["effusion"])[spec.text_inputs[0]].shape[1]
    assert width < 16 if spec.text_padding == "longest" else width == spec.context_length
    assert _served_text_parity(name, ["effusion"], clients, encoders, served_tokenizers).min() >= PARITY


@pytest.mark.triton
@pytest.mark.parametrize("name", SERVED)
def test_a_report_longer_than_the_context_is_truncated_and_matches_pytorch(name, clients, encoders,
                                                                           served_tokenizers, report_texts):
    spec = get_model(name)
    assert served_tokenizers[name](report_texts[-1:])[spec.text_inputs[0]].shape[1] == spec.context_length
    assert _served_text_parity(name, report_texts[-1:], clients, encoders, served_tokenizers).min() >= PARITY



@pytest.mark.triton
@pytest.mark.parametrize("name", SERVED)
def test_texts_of_every_length_sent_at_once_are_batched_together_and_match_pytorch(name, served, encoders,
                                                                                 served_tokenizers, report_texts):
    """One text per request from 16 threads, each text of another token length (the first 1, 2, ... words
    of a report, and the whole report): fewer executions than requests means the dynamic batcher
    gathered requests of different lengths, padded together by the python model; each still matches
    PyTorch."""
    spec, encoder = get_model(name), encoders[name]
    words = report_texts[-1].split()
    texts = [" ".join(words[:count]) for count in range(1, 32)] + [report_texts[-1]]
    if spec.text_padding == "longest":
        widths = [served_tokenizers[name]([t])[spec.text_inputs[0]].shape[1] for t in texts]
        assert len(set(widths)) == len(texts)
    reference = torch_text_embeds(encoder, spec, encoder.tokenize(texts))
    before = triton_counts(served, spec.text_model)

    def embed(text):  # a client per thread, as the gateway's callers are
        client = TowerClient(connections(served), *towers(spec), spec.batching.max_batch_size)
        try:
            return client.embed_texts(served_tokenizers[name]([text]))
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        embeds = np.concatenate(list(pool.map(embed, texts)))
    inferences, executions = (now - then for now, then in zip(triton_counts(served, spec.text_model), before))
    assert inferences == len(texts)
    assert executions < len(texts), f"{len(texts)} requests ran in {executions} executions: no batching"
    assert cosine(embeds, reference).min() >= PARITY
