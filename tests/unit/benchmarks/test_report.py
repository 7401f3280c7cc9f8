from benchmarks import report


def _levels(qps_by_concurrency):
    return [{"concurrency": c, "qps": q, "p50_ms": 1000 / q, "p95_ms": 1200 / q, "p99_ms": 1500 / q,
             "requests": 10, "errors": 0} for c, q in qps_by_concurrency.items()]


def _task(model_map, random_map, p95):
    return {"model": {"mAP": model_map, "R@1": 0.5, "R@5": 0.8, "R@10": 0.9, "MRR": 0.6, "per_label_AP": {}},
            "random": {"mAP": random_map, "mAP_p95": p95, "R@1": 0.4, "R@5": 0.7, "R@10": 0.85, "MRR": 0.5,
                       "per_label_AP": {}}}


def _model(i2i, t2i, batched_qps, unbatched_qps, in_process_qps):
    speed = {"gateway": {k: _levels({1: 10, 16: batched_qps}) for k in ("text", "image")},
             "gateway_no_batching": {k: _levels({1: 10, 16: unbatched_qps}) for k in ("text", "image")},
             "in_process": {k: _levels({1: 10, 16: in_process_qps}) for k in ("text", "image")}}
    return {"use": "a trained model", "quality": {"image_to_image": i2i, "text_to_image": t2i}, "speed": speed,
            "index_build": {"images_per_s": 40.0}, "index_mb": 0.3, "onnx_mb": {"a_image": 20.0, "a_text": 90.0},
            "triton_rss_mb": 400.0, "gateway_rss_mb": 600.0}


RESULTS = {
    "machine": {"host": "test", "cpu": "cpu", "cores": 2, "memory_gb": 24, "date": "2026-11-28"},
    "settings": {"profile": "quick", "concurrencies": [1, 16], "max_requests": 10, "max_seconds": 5, "top_k": 10,
                 "archive": "nih800", "split": "by patient, seed 0", "validation_images": 200},
    "models": {
        "good": _model(_task(0.42, 0.39, 0.395), _task(0.17, 0.11, 0.13), 50, 20, 10),
        "twin": _model(_task(0.39, 0.39, 0.395), _task(0.11, 0.11, 0.13), 10, 10, 20),
    },
}


def test_recommendations_follow_the_figures():
    lines = report.recommendations(RESULTS)
    text = "\n".join(lines)
    assert "twin ranks at chance" in text
    assert "good beats chance" in text and "0.420 vs random 0.390" in text
    assert "good, image queries at concurrency 16: dynamic batching gives 2.5x" in text and "meets the 2x" in text
    assert "good, image queries at concurrency 16: the served stack gives 5.0x" in text
    assert "twin, text queries at concurrency 16: the served stack gives 0.5x" in text and "misses" in text
    assert "Best image→image retrieval: good (mAP 0.420)" in text
    assert "good (a trained model): text query 100.0 ms p50, image query 100.0 ms p50 alone" in text


def test_report_writes_markdown_and_plots(tmp_path):
    markdown = report.write(RESULTS, tmp_path / "run.md")
    assert (tmp_path / "run.md").read_text() == markdown
    for name in ("run-latency.png", "run-throughput.png", "run-map.png"):
        assert (tmp_path / name).stat().st_size > 1000
        assert f"]({name})" in markdown
    assert "| good | 0.420 (0.390)" in markdown and "## Recommendations" in markdown
