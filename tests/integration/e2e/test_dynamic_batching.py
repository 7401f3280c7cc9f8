"""Concurrent requests are executed together by Triton's dynamic batcher, with the same results."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cxr.images import load_pixels
from cxr.registry import get_model
from cxr.towers import towers
from cxr.triton.request import connections
from cxr.triton.sync_client import TowerClient
from support import triton_counts

MODEL = "siglip-tiny"
REQUESTS = 48



@pytest.mark.triton
def test_concurrent_requests_run_in_batches_and_match_unbatched(served, xray_paths):
    spec = get_model(MODEL)
    pixels = load_pixels((xray_paths * 8)[:REQUESTS], spec.image_size)
    one = TowerClient(connections(served), *towers(spec), max_batch_size=1)
    unbatched = np.concatenate([one.embed_images(pixels[i:i + 1]) for i in range(REQUESTS)])
    inferences_before, executions_before = triton_counts(served, spec.image_model)

    def embed(i):  # one client per thread, one image per request, all at once
        client = TowerClient(connections(served), *towers(spec), max_batch_size=1)
        try:
            return client.embed_images(pixels[i:i + 1])
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        batched = np.concatenate(list(pool.map(embed, range(REQUESTS))))
    inferences, executions = triton_counts(served, spec.image_model)
    inferences -= inferences_before
    executions -= executions_before
    # At least ours: the served Triton is shared with the session's gateways, and a call a test gave up on
    # can still reach it while this one runs.
    assert inferences >= REQUESTS
    assert executions < inferences, f"{inferences} inferences ran in {executions} executions: no batching"
    np.testing.assert_allclose(batched, unbatched, atol=1e-5)
    one.close()
