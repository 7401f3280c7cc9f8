"""The synchronous client over fake Tritons: batches cut to max_batch_size, failover, threads at once."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cxr.settings import SettingsError
from cxr.triton.sync_client import TowerClient
from support.fake_triton import TEXT_TOWER, TOWER, FakeTriton, closed_url, serve


class Fakes:
    """Fake Tritons served from a thread of their own, as a real Triton is from another process."""

    def __init__(self, *fakes: FakeTriton):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.served = [self._run(serve(fake)) for fake in fakes]
        self.urls = [url for _, url in self.served]

    def stop(self) -> None:
        for server, _ in self.served:
            self._run(server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)


@pytest.fixture
def fake():
    made = FakeTriton(5)
    fakes = Fakes(made)
    yield made, fakes.urls[0]
    fakes.stop()


def test_a_batch_goes_in_requests_of_at_most_max_batch_size(fake):
    triton, url = fake
    client = TowerClient([{"url": url}], TOWER, TEXT_TOWER, max_batch_size=4)
    try:
        vectors = client.embed_images(np.zeros((10, 4, 4, 3), np.uint8))
        empty = client.embed_images(np.zeros((0, 4, 4, 3), np.uint8))
    finally:
        client.close()
    client.close()  # a second close does nothing
    assert vectors.shape == (10, 3) and (vectors[:, 0] == 5).all() and triton.rows == [4, 4, 2]
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_a_dead_first_endpoint_is_passed_over(fake):
    triton, url = fake
    client = TowerClient([{"url": closed_url()}, {"url": url}], TOWER, TEXT_TOWER, max_batch_size=8)
    try:
        answers = [client.embed_images(np.zeros((2, 4, 4, 3), np.uint8)) for _ in range(4)]
    finally:
        client.close()
    assert all((a[:, 0] == 5).all() for a in answers) and triton.infers == 4


def test_threads_share_one_client(fake):
    triton, url = fake
    client = TowerClient([{"url": url}], TOWER, TEXT_TOWER, max_batch_size=8)
    try:
        with ThreadPoolExecutor(8) as threads:
            answers = list(threads.map(lambda _: client.embed_images(np.zeros((1, 4, 4, 3), np.uint8)), range(32)))
    finally:
        client.close()
    assert len(answers) == 32 and triton.infers == 32


def test_no_endpoint_is_a_settings_error_and_leaves_no_thread():
    before = threading.active_count()
    with pytest.raises(SettingsError, match="no Triton endpoint"):
        TowerClient([], TOWER, TEXT_TOWER, max_batch_size=8)
    assert threading.active_count() == before
