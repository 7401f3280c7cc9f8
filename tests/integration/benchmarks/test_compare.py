"""`make bench-quick` in miniature: the real compare run on cxr-mini (export, Triton with and
without batching, gateway, in-process baseline), writing its JSON and report."""

import json

import pytest

from benchmarks.compare import Profile, run

pytestmark = pytest.mark.triton


def test_compare_measures_every_design_and_writes_the_report(tmp_path):
    out = tmp_path / "bench.json"
    run(["cxr-mini"], "quick", out=out, profile=Profile(concurrencies=(1, 2), max_requests=6, max_seconds=10))
    results = json.loads(out.read_text())
    model = results["models"]["cxr-mini"]
    assert set(model["speed"]) == {"gateway", "gateway_no_batching", "in_process"}
    for design in model["speed"].values():
        for kind in ("text", "image"):
            assert [level["concurrency"] for level in design[kind]] == [1, 2]
            assert all(level["requests"] == 6 and level["errors"] == 0 for level in design[kind])
    quality = model["quality"]
    assert quality["image_to_image"]["model"]["mAP"] > quality["image_to_image"]["random"]["mAP"]
    assert set(quality) == {"image_to_image", "text_to_image", "bare_label_to_image"}
    assert model["index_build"]["images"] == 200 and model["triton_rss_mb"] > 0 and model["gateway_rss_mb"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "## Recommendations" in markdown and "cxr-mini beats chance" in markdown
    assert out.with_name("bench-throughput.png").is_file()
