"""The text-embedding cache: repeats skip Triton, a re-export is a miss, LRU within its size, digests
only (through a real gateway: tests/integration/gateway/test_text_cache.py)."""

from types import SimpleNamespace

import numpy as np

from gateway.metrics import GatewayMetrics
from gateway.text_cache import TextEmbeddingCache


def _model(name="m", export="sha-1"):
    text = SimpleNamespace(triton_name=f"{name}_text")
    return SimpleNamespace(name=name, text=text, manifest={"onnx": {text.triton_name: {"sha256": export}}})


def _count(metrics, kind, model="m") -> float:
    return metrics.registry.get_sample_value(f"cxr_gateway_text_cache_{kind}_total", {"model": model}) or 0.0


def test_a_repeat_is_a_hit_whatever_its_whitespace_and_is_counted():
    metrics = GatewayMetrics()
    cache = TextEmbeddingCache(8, metrics)
    assert cache.get(_model(), "small effusion") is None
    cache.put(_model(), "small effusion", np.ones(4))
    hit = cache.get(_model(), "  small\n effusion ")
    assert np.array_equal(hit, np.ones(4)) and not hit.flags.writeable
    assert (_count(metrics, "hits"), _count(metrics, "misses")) == (1, 1)


def test_another_export_or_model_does_not_share_vectors():
    cache = TextEmbeddingCache(8)
    cache.put(_model(), "effusion", np.ones(4))
    assert cache.get(_model(export="sha-2"), "effusion") is None
    assert cache.get(_model(name="other"), "effusion") is None
    assert cache.get(_model(), "Effusion") is None  # case is the tokenizer's business, not the cache's


def test_the_least_recently_used_goes_first_and_zero_turns_it_off():
    cache = TextEmbeddingCache(2)
    for text in ("a", "b"):
        cache.put(_model(), text, np.zeros(2))
    cache.get(_model(), "a")
    cache.put(_model(), "c", np.zeros(2))
    assert cache.get(_model(), "b") is None and cache.get(_model(), "a") is not None and len(cache) == 2
    off = TextEmbeddingCache(0)
    off.put(_model(), "a", np.zeros(2))
    assert off.get(_model(), "a") is None and len(off) == 0


def test_the_cache_keeps_digests_not_text():
    cache = TextEmbeddingCache(4)
    cache.put(_model(), "patient has a left pneumothorax", np.zeros(2))
    assert all(isinstance(key, bytes) and b"pneumothorax" not in key for key in cache._vectors)
