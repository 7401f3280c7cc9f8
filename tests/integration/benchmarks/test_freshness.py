"""`make bench-freshness` in miniature: the real benchmark (cxr-mini exported, a real Triton, the gateway, an
Orthanc and `cxr index follow`) on a 2,000-image base with 3 samples a part; its JSON checked for structure and
for what must hold on any machine: every sample found, no deletion returned after its acknowledgement."""

import json

import pytest

from benchmarks import freshness, freshness_report, machine, orthanc

pytestmark = pytest.mark.triton
SIZE, SAMPLES = 2000, 3
ADDED, DELETED = 40, 20


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    if reason := orthanc.missing():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(machine, "RESULTS_DIR", folder)  # not benchmarks/results
        freshness.run(freshness.Plan(sizes=(SIZE,), samples=SAMPLES, load_s=4.0, added=ADDED, deleted=DELETED))
    (path,) = folder.glob("*-freshness.json")
    return json.loads(path.read_text()), path


def _ordered(part: dict) -> bool:
    return 0 < part["p50_s"] <= part["p95_s"] <= part["max_s"] < freshness.WITHIN_S


def test_every_sample_is_found_and_no_deletion_outlives_its_acknowledgement(measured):
    results, _ = measured
    assert list(results["sizes"]) == [str(SIZE)]
    figures = results["sizes"][str(SIZE)]
    assert figures["base"]["images"] == SIZE and figures["base"]["index_type"] == "flat"
    for part in ("searchable", "searchable_together", "deleted_in_pacs"):
        assert figures[part]["samples"] == SAMPLES and figures[part]["missed"] == 0, part
        assert _ordered(figures[part]) and len(figures[part]["seconds"]) == SAMPLES, part
    for part in ("searchable", "deleted_in_pacs"):  # the follower logged each commit
        assert figures[part]["follower_committed"]["missed"] == 0, part
    assert figures["searchable"]["follower_commits"] == SAMPLES  # one at a time: a commit each
    rpc = figures["deleted_by_rpc"]
    assert rpc["deleted"] == SAMPLES and rpc["returned_after_ack"] == 0
    assert rpc["searches_after_ack"] >= SAMPLES and rpc["max_s"] < freshness.WITHIN_S
    assert freshness_report.sanity(results) == []


def test_load_commits_and_compaction_are_measured(measured):
    figures = measured[0]["sizes"][str(SIZE)]
    load = figures["load"]
    assert load["idle"]["requests"] > 0 and load["ingesting"]["requests"] > 0
    assert load["idle"]["errors"] == load["ingesting"]["errors"] == load["idle_after"]["errors"] == 0
    assert load["ingest"]["stored"] > 0 and load["ingest"]["index_grew_by"] == load["ingest"]["stored"]
    cpu = load["cpu_s"]
    assert set(cpu["idle"]) == {"triton", "gateway", "follower", "orthanc"}
    assert cpu["ingesting"]["follower"] > cpu["idle"]["follower"]  # it fetched, decoded and committed
    assert 1 <= load["ingest"]["follower_commits"] <= load["ingest"]["stored"]
    commits = figures["commits"]
    assert commits["add"]["commits"] == ADDED // freshness.COMMIT_ROWS - 1  # the first apart
    assert commits["delete"]["commits"] == DELETED // freshness.COMMIT_ROWS
    assert commits["pending"] >= ADDED + DELETED
    compaction = figures["compaction"]
    assert compaction["images_after"] == compaction["images_before"]
    assert compaction["peak_rss_mb"] >= compaction["peak_anonymous_mb"] > 0
    assert compaction["gateway_reloaded_after_s"] is not None
    assert figures["peak_rss_mb"]["gateway"] > 0 and figures["peak_rss_mb"]["follower"] > 0


def test_the_report_and_plot_are_written_beside_the_json(measured):
    _, path = measured
    markdown = path.with_suffix(".md").read_text()
    assert "## Targets" in markdown and "## Where each part stops scaling" in markdown
    assert f"| {SIZE:,} |" in markdown
    assert path.with_suffix(".png").stat().st_size > 0
