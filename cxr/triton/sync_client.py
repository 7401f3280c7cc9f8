"""The Triton client for synchronous code (index builds, benchmarks, tests): one model's two towers.

It runs cxr.triton.client's asyncio client on an event loop of its own, in a thread of its own, so
a build gets what the gateway gets: every endpoint of settings.triton_endpoints, balanced, with an
endpoint that cannot be reached ejected and the batch tried on another. Any number of threads may
call one client at once; their requests share its channels.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence

import numpy as np

from cxr.towers import TowerSpec
from cxr.triton.client import AsyncTowerClient


class TowerClient:
    def __init__(self, connections: Sequence[dict], image: TowerSpec, text: TowerSpec, max_batch_size: int):
        """`connections`: cxr.triton.request.connections(settings), one per endpoint."""
        self.image = image
        self.text = text
        self.max_batch_size = max_batch_size
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="triton-client", daemon=True)
        self._thread.start()
        try:  # made on the loop: asyncio channels belong to the loop they start on
            self._client = self._run(_made(connections))
        except BaseException:
            self._stop()
            raise

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._infer(self.image, {self.image.inputs[0].name: pixels})

    def embed_texts(self, tokens: dict[str, np.ndarray]) -> np.ndarray:
        return self._infer(self.text, tokens)

    def close(self) -> None:
        """A second close does nothing."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop()

    def _infer(self, tower: TowerSpec, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """One request per max_batch_size rows: Triton rejects larger batches."""
        count = len(next(iter(arrays.values())))
        parts = [self._run(self._client.infer(tower, {name: a[start:start + self.max_batch_size]
                                                      for name, a in arrays.items()}))
                 for start in range(0, count, self.max_batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, *tower.output.dims), np.float32)

    def _run(self, coroutine: Coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _made(connections: Sequence[dict]) -> AsyncTowerClient:
    return AsyncTowerClient(connections)
