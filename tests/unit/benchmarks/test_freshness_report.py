"""The freshness report's verdicts, tables and extrapolations, from made-up figures (no servers)."""

import copy

from benchmarks import freshness_report


def _spread(p50, p95, missed=0, samples=5):
    return {"samples": samples, "missed": missed, "seconds": [p50] * samples, "p50_s": p50, "p95_s": p95,
            "max_s": p95}


def _size(size, searchable_p95=2.0, ratio=0.9, add_ms=10.0, returned=0, compact_s=1.0, gateway_mb=100.0):
    scale = size / 100_000
    return {
        "base": {"images": size, "index_type": "ivf", "synth_s": 10 * scale, "synth_peak_rss_mb": 50},
        "searchable": dict(_spread(1.5, searchable_p95), follower_committed=_spread(1.2, 1.8), follower_cpu_s=10.0,
                           follower_commits=5),
        "searchable_together": _spread(2.0, 2.5),
        "deleted_in_pacs": dict(_spread(2.0, 3.0), follower_committed=_spread(1.7, 2.6)),
        "deleted_by_rpc": dict(_spread(0.01, 0.05), deleted=5, searches_after_ack=200, returned_after_ack=returned),
        "load": {"idle": {"qps": 100.0, "p50_ms": 80, "p99_ms": 200, "errors": 0},
                 "ingesting": {"qps": 100.0 * ratio, "p50_ms": 90, "p99_ms": 250, "errors": 0},
                 "idle_after": {"qps": 100.0, "p50_ms": 80, "p99_ms": 200, "errors": 0}, "qps_ratio": ratio,
                 "ingest": {"stored": 100, "seconds": 10.0, "per_s": 10.0, "all_searchable_after_load_s": 1.0,
                            "index_grew_by": 100, "follower_commits": 5},
                 "cpu_s": {"idle": {"triton": 30.0, "gateway": 8.0, "follower": 0.5, "orthanc": 0.1},
                           "ingesting": {"triton": 28.0, "gateway": 7.0, "follower": 6.5, "orthanc": 2.1}}},
        "commits": {"first_ms": 30.0, "add": {"commits": 9, "p50_ms": add_ms, "p95_ms": 2 * add_ms, "max_ms": 40.0},
                    "delete": {"commits": 5, "p50_ms": 5.0, "p95_ms": 6.0, "max_ms": 7.0}, "rows_per_commit": 10,
                    "add_first_tenth": {"commits": 1, "p50_ms": 8.0, "p95_ms": 8.0, "max_ms": 8.0},
                    "add_last_tenth": {"commits": 1, "p50_ms": 12.0, "p95_ms": 12.0, "max_ms": 12.0},
                    "pending": 150},
        "compaction": {"seconds": compact_s * scale, "peak_rss_mb": 200 * scale, "peak_anonymous_mb": 100 * scale,
                       "gateway_reloaded_after_s": 0.5,
                       "images_before": size, "images_after": size},
        "search_c1": {k: {"p50_ms": 10.0, "p95_ms": 12.0, "requests": 100}
                      for k in ("before_commits", "commits_pending", "after_compaction")},
        "peak_rss_mb": {"gateway": gateway_mb * scale, "follower": 150.0},
    }


def _results(sizes: dict) -> dict:
    return {"machine": {"host": "test", "cpu": "cpu", "cores": 2, "memory_gb": 23.5, "date": "2026-12-03"},
            "code": "abc1234", "command": "make bench-freshness",
            "settings": {"sizes": [int(s) for s in sizes], "samples": 5, "load_s": 10.0, "added": 100,
                         "deleted": 50, "model": "cxr-mini", "top_k": 10, "concurrency": 16, "ingest_per_s": 10.0,
                         "pause_s": 2.0, "after_ack_s": 1.0, "ivf_from": 100_000, "commit_rows": 10,
                         "follower": "cxr index follow, defaults", "index_changes_poll_s": 0.2},
            "sizes": {str(size): figures for size, figures in sizes.items()}}


def _two(**large):
    return _results({100_000: _size(100_000), 1_000_000: _size(1_000_000, **large)})


def test_figures_within_the_targets_raise_no_problem():
    assert freshness_report.problems(_two()) == []
    assert all(met for *_, met in freshness_report.targets(_two()))


def test_each_target_missed_is_a_problem():
    assert any("searchable p95" in p and "1,000,000" in p for p in freshness_report.problems(_two(searchable_p95=6.0)))
    assert any("while ingesting" in p for p in freshness_report.problems(_two(ratio=0.7)))
    grown = freshness_report.problems(_two(add_ms=25.0))
    assert any("commit of 10 added images" in p and "2.50×" in p for p in grown)


def test_a_deletion_returned_after_its_acknowledgement_fails_sanity():
    results = _two(returned=1)
    assert any("after DeleteStudy acknowledged it" in line for line in freshness_report.sanity(results))
    missed = copy.deepcopy(_two())
    missed["sizes"]["100000"]["searchable"]["missed"] = 1
    assert freshness_report.sanity(missed) == ["100,000: 1 of 5 samples missed in searchable"]


def test_the_markdown_extrapolates_to_ten_million_through_the_sizes_measured():
    markdown = freshness_report.markdown(_two(), "plot.png")
    assert "![freshness, deletion, load and commits](plot.png)" in markdown
    # compaction: 1 s, 200 MB (100 MB anonymous) per 100,000 images -> 100 s, 19.5 GB (9.8 GB) at 10M
    assert "about 100 s and 20,000 MB at 10M" in markdown
    assert "peak at about 19.5 GB resident, 9.8 GB of it anonymous" in markdown
    assert "within this machine's memory" in markdown
    # the follower and Orthanc used 8 CPU-s more while 100 images were ingested, in 5 commits of 20 images
    assert "| 1,000,000 | ingesting | 28.0 | 7.0 | 6.5 | 2.1 | 80 ms | 5 | 1.30 s |" in markdown
    # one image a commit: 2 CPU-s each; 20 a commit: 1.3 s each
    assert "The follower used 2.00 CPU-s per commit of one image and 1.30 per commit of 20.0 images" in markdown


def test_one_size_has_no_growth_verdict_and_says_so(tmp_path):
    results = _results({2000: _size(2000)})
    assert not any("no growth" in target for target, *_ in freshness_report.targets(results))
    assert "Two sizes or more are needed" in freshness_report.markdown(results, "plot.png")
    freshness_report.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_compaction_that_would_not_fit_at_ten_million_is_said_so():
    results = _two()
    for figures in results["sizes"].values():
        figures["compaction"]["peak_anonymous_mb"] *= 3  # 300 MB per 100,000 images: 29 GB at 10M
    assert "of 23.5 GB, more than this machine has" in freshness_report.markdown(results, "plot.png")
