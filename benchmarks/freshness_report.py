"""The freshness benchmark's verdicts, Markdown (targets, tables, where each part stops scaling) and plot,
all drawn from its JSON (benchmarks.freshness)."""

from __future__ import annotations

from pathlib import Path

SEARCHABLE_P95_S = 5.0
DELETED_AFTER_ACK_S = 1.0
INGEST_QPS_RATIO = 0.8
GROWTH = 2.0  # a step whose p50 at the largest size is more than this times the smallest's grows with the archive
TEN_MILLION = 10_000_000


def _sizes(results: dict) -> list[tuple[int, dict]]:
    return sorted((int(size), figures) for size, figures in results["sizes"].items())


def brief(figures: dict) -> str:
    """One log line of a part's figures."""
    if "idle" in figures:
        return (f"{figures['idle']['qps']} q/s idle, {figures['ingesting']['qps']} q/s ingesting "
                f"({figures['qps_ratio']}x); ingested {figures['ingest']['stored']} at {figures['ingest']['per_s']}/s")
    line = (f"p50 {figures.get('p50_s')} s, p95 {figures.get('p95_s')} s, max {figures.get('max_s')} s, "
            f"missed {figures['missed']} of {figures['samples']}")
    if "returned_after_ack" in figures:
        line += f"; returned by {figures['returned_after_ack']} of {figures['searches_after_ack']} searches after ack"
    return line


# Verdicts.

def _sanity(size: int, f: dict) -> list[str]:
    """What must hold whatever the machine: every sample seen, no deletion returned after its acknowledgement."""
    out = [f"{size:,}: {f[part]['missed']} of {f[part]['samples']} samples missed in {part}"
           for part in ("searchable", "searchable_together", "deleted_in_pacs") if f[part]["missed"]]
    rpc = f["deleted_by_rpc"]
    if rpc["returned_after_ack"]:
        out.append(f"{size:,}: {rpc['returned_after_ack']} searches returned a study after DeleteStudy acknowledged it")
    if rpc["deleted"] != rpc["samples"]:
        out.append(f"{size:,}: DeleteStudy removed {rpc['deleted']} images of {rpc['samples']} single-image studies")
    ingest = f["load"]["ingest"]
    if ingest["all_searchable_after_load_s"] is None:
        out.append(f"{size:,}: of {ingest['stored']} images stored under load, the index grew by "
                   f"{ingest['index_grew_by']}")
    compaction = f["compaction"]
    if compaction["images_after"] != compaction["images_before"]:
        out.append(f"{size:,}: compaction changed the images served from {compaction['images_before']} to "
                   f"{compaction['images_after']}")
    return out


def targets(results: dict) -> list[tuple[str, str, str, bool]]:
    """(target, size, measured, met) for each target and size."""
    rows = []
    for size, f in _sizes(results):
        p95, ratio = f["searchable"].get("p95_s"), f["load"]["qps_ratio"]
        rpc = f["deleted_by_rpc"]
        rows += [
            (f"STOW-RS → searchable p95 ≤ {SEARCHABLE_P95_S:g} s", f"{size:,}", f"{p95} s",
             p95 is not None and p95 <= SEARCHABLE_P95_S),
            (f"DeleteStudy: gone ≤ {DELETED_AFTER_ACK_S:g} s after its acknowledgement", f"{size:,}",
             f"gone at the ack: {rpc['returned_after_ack']} of {rpc['searches_after_ack']} searches after it "
             f"returned it; ack p95 {rpc.get('p95_s')} s", rpc["returned_after_ack"] == 0),
            (f"image q/s while ingesting {results['settings']['ingest_per_s']:g}/s ≥ {INGEST_QPS_RATIO:g}× idle",
             f"{size:,}", f"{ratio}×", ratio is not None and ratio >= INGEST_QPS_RATIO),
        ]
    rows += _growth(results)
    return rows


def _growth(results: dict) -> list[tuple[str, str, str, bool]]:
    """Ingest steps whose p50 at the largest size is more than GROWTH times the smallest's."""
    sizes = _sizes(results)
    if len(sizes) < 2:
        return []
    (small, first), (large, last) = sizes[0], sizes[-1]
    steps = {"commit of 10 added images": lambda f: f["commits"]["add"]["p50_ms"],
             "commit of 10 deletions": lambda f: f["commits"]["delete"].get("p50_ms")}
    rows = []
    for name, value in steps.items():
        a, b = value(first), value(last)
        if a and b:
            rows.append((f"{name}: no growth with the base (p50 ≤ {GROWTH:g}× from {small:,} to {large:,})",
                         f"{small:,} → {large:,}", f"{a} → {b} ms ({b / a:.2f}×)", b <= GROWTH * a))
    return rows


def sanity(results: dict) -> list[str]:
    """What went wrong whatever the machine: samples missed, deletions seen after their acknowledgement, ..."""
    return [line for size, f in _sizes(results) for line in _sanity(size, f)]


def problems(results: dict) -> list[str]:
    """Sanity failures and targets missed: the benchmark's exit status."""
    missed = [f"target missed: {target} at {size}: {measured}"
              for target, size, measured, met in targets(results) if not met]
    return sanity(results) + missed


# Markdown.

def markdown(results: dict, plot_name: str) -> str:
    sections = [_header(results), _targets_table(results), _freshness_table(results), _deletion_table(results),
                _load_table(results), _commit_table(results), f"![freshness, deletion, load and commits]({plot_name})",
                _scaling(results)]
    return "\n\n".join(sections) + "\n"


def _header(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    return (f"# Living index: freshness, deletion, load, compaction — {m['date']}\n\n"
            f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, no GPU; code {results.get('code') or '?'}. "
            f"Command: `python -m benchmarks.freshness --sizes {','.join(str(x) for x in s['sizes'])} "
            f"--samples {s['samples']} --load-seconds {s['load_s']:g} --added {s['added']} --deleted {s['deleted']}` "
            f"(`{results['command']}` runs the defaults).\n\n"
            f"{s['model']} served by a real Triton and the real gateway (gRPC, rate limit off, auth off); a synthetic "
            f"base per size written by `cxr index synth` (IVF from {s['ivf_from']:,} images, flat below); a real "
            f"Orthanc followed by `{s['follower']}`; NIH images stored as new single-image DICOM studies; a sample "
            f"counts as searchable when SearchByImage (top {s['top_k']}) with its DICOM returns it, asked every 20 ms. "
            f"The gateway takes in commits every {s['index_changes_poll_s']:g} s. The machine's 1-minute load "
            f"average before and after each size: {_load_averages(results)} (other work shares these cores).")


def _load_averages(results: dict) -> str:
    return ", ".join(f"{size:,}: {f['load_average_1min']['before']} / {f['load_average_1min']['after']}"
                     for size, f in _sizes(results) if "load_average_1min" in f) or "not recorded"


def _targets_table(results: dict) -> str:
    lines = ["## Targets", "", "| target | size | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t} | {size} | {measured} | {'yes' if met else '**no**'} |"
              for t, size, measured, met in targets(results)]
    failed = sanity(results)
    lines += ["", "Sanity: " + ("every sample was found, every deletion acknowledged held, compaction kept every image."
                                if not failed else "; ".join(failed))]
    return "\n".join(lines)


def _cells(figures: dict) -> str:
    return f"{figures.get('p50_s')} | {figures.get('p95_s')} | {figures.get('max_s')} | {figures['missed']}"


def _freshness_table(results: dict) -> str:
    lines = ["## STOW-RS to searchable (seconds from the STOW response)", "",
             "| base images | index | one at a time: p50 | p95 | max | missed | of which the follower, to its "
             "commit: p50 / p95 | in one STOW of n: p50 | p95 | last | missed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, f in _sizes(results):
        lines.append(f"| {size:,} | {f['base']['index_type']} | {_cells(f['searchable'])} | "
                     f"{_follower_cells(f['searchable'])} | {_cells(f['searchable_together'])} |")
    return "\n".join(lines + ["", "Each sample is stored at a random moment (a pause of up to "
                              f"{results['settings']['pause_s']:g} s before it), so the follower's look at Orthanc's "
                              "change feed and the gateway's look for commits fall anywhere in their periods. The "
                              "follower's part ends when it logs the commit (its look, WADO-RS fetch, decode, "
                              "encode, commit); the rest is the gateway taking the commit in and the search."])


def _follower_cells(part: dict) -> str:
    committed = part.get("follower_committed") or {}
    return f"{committed.get('p50_s')} / {committed.get('p95_s')}"


def _deletion_table(results: dict) -> str:
    lines = ["## Deletion", "", "| base images | Orthanc DELETE → unsearchable: p50 | p95 | max | missed | "
             "of which the follower, to its commit: p50 / p95 | DeleteStudy → ack: p50 | p95 | max | "
             "images deleted | searches after ack | returned it |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, f in _sizes(results):
        rpc = f["deleted_by_rpc"]
        lines.append(f"| {size:,} | {_cells(f['deleted_in_pacs'])} | {_follower_cells(f['deleted_in_pacs'])} | "
                     f"{rpc.get('p50_s')} | {rpc.get('p95_s')} | {rpc.get('max_s')} | {rpc['deleted']} | "
                     f"{rpc['searches_after_ack']} | {rpc['returned_after_ack']} |")
    return "\n".join(lines + ["", "Orthanc's change feed tells of no deletion: Orthanc's Lua callback "
                              "(deploy/orthanc/cxr-follow-deletions.lua) posts a notice to the follower, which confirms "
                              "it with Orthanc and commits it. DeleteStudy answers once the gateway's "
                              "own store has taken the commit in; every search for "
                              f"{results['settings']['after_ack_s']:g} s after the answer is counted."])


def _load_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"## Image search under ingest ({s['concurrency']} clients, {s['load_s']:g} s each)", "",
             "| base images | idle q/s | p50 ms | p99 ms | ingesting q/s | p50 ms | p99 ms | idle again q/s | p99 ms "
             "| ratio | stored | per s | all searchable after the load, s | errors |", "|" + "---|" * 14]
    for size, f in _sizes(results):
        load = f["load"]
        idle, busy, again, ingest = load["idle"], load["ingesting"], load["idle_after"], load["ingest"]
        lines.append(f"| {size:,} | {idle['qps']} | {idle.get('p50_ms')} | {idle.get('p99_ms')} | {busy['qps']} | "
                     f"{busy.get('p50_ms')} | {busy.get('p99_ms')} | {again['qps']} | {again.get('p99_ms')} | "
                     f"{load['qps_ratio']}× | {ingest['stored']} | {ingest['per_s']} | "
                     f"{ingest['all_searchable_after_load_s']} | {idle['errors'] + busy['errors'] + again['errors']} |")
    lines += ["", f"Ingest: another process stores {s['ingest_per_s']:g} images a second by STOW-RS into Orthanc; "
              "the follower fetches, decodes and encodes them (the same Triton the searches use) and commits them. "
              "The ratio is q/s while ingesting over the mean of the idle runs before and after it.", "",
              "CPU seconds each part used (with its children) in the idle run and in the ingesting one (which lasts "
              "until the last image stored is searchable):", "",
              "| base images | run | Triton | gateway | follower | Orthanc | follower + Orthanc per image ingested | "
              "follower commits | follower per commit |", "|" + "---|" * 9]
    for size, f in _sizes(results):
        cpu, ingest = f["load"].get("cpu_s"), f["load"]["ingest"]
        for run in ("idle", "ingesting") if cpu else ():
            c, extra = cpu[run], ["", "", ""]
            if run == "ingesting":
                extra = [f"{_ingest_cpu_ms(f):,.0f} ms", ingest.get("follower_commits", "?"), ""]
                if ingest.get("follower_commits"):
                    extra[2] = f"{c['follower'] / ingest['follower_commits']:.2f} s"
            lines.append(f"| {size:,} | {run} | {c['triton']} | {c['gateway']} | {c['follower']} | {c['orthanc']} | "
                         + " | ".join(map(str, extra)) + " |")
    return "\n".join(lines)


def _ingest_cpu_ms(f: dict) -> float:
    """CPU ms per image ingested that the follower and Orthanc used beyond their idle run's."""
    cpu, stored = f["load"]["cpu_s"], f["load"]["ingest"]["stored"]
    extra = sum(cpu["ingesting"][k] - cpu["idle"][k] for k in ("follower", "orthanc"))
    return 1000 * extra / stored if stored else 0.0


def _commit_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"## Commits and compaction ({s['added']:,} images added and {s['deleted']:,} deleted, "
             f"{s['commit_rows']} a commit, through FaissBackend.apply)", "",
             "| base images | add commit p50 / p95 / max ms | add p50, first / last tenth | delete commit p50 / p95 ms "
             "| a process's first commit ms "
             "| search p50 ms: before | pending | compacted | `cxr index compact` s | its peak RSS MB (anonymous) | "
             "gateway "
             "reloaded after s | gateway / follower peak RSS MB |", "|" + "---|" * 12]
    for size, f in _sizes(results):
        c, search, compaction = f["commits"], f["search_c1"], f["compaction"]
        add, delete = c["add"], c["delete"]
        lines.append(f"| {size:,} | {add['p50_ms']} / {add['p95_ms']} / {add['max_ms']} | "
                     f"{c['add_first_tenth']['p50_ms']} / {c['add_last_tenth']['p50_ms']} | {delete.get('p50_ms')} / "
                     f"{delete.get('p95_ms')} | {c['first_ms']} | {search['before_commits']['p50_ms']} | "
                     f"{search['commits_pending']['p50_ms']} | {search['after_compaction']['p50_ms']} | "
                     f"{compaction['seconds']} | {compaction['peak_rss_mb']:,} "
                     f"({compaction.get('peak_anonymous_mb')}) | "
                     f"{compaction['gateway_reloaded_after_s']} | {f['peak_rss_mb']['gateway']:,.0f} / "
                     f"{f['peak_rss_mb']['follower']:,.0f} |")
    return "\n".join(lines + ["", "A commit writes the added rows or deleted ids beside the build and replaces the "
                              "generation file (fsynced); a process's first commit also opens the build's image "
                              "table. Search latency is one client's image query, top 10."])


def _per_image(results: dict, value) -> tuple[float, float] | None:
    """(intercept, slope per image) of `value` through the smallest and largest sizes; None under two sizes."""
    points = [(size, value(f)) for size, f in _sizes(results)]
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return None
    (x0, y0), (x1, y1) = points[0], points[-1]
    slope = (y1 - y0) / (x1 - x0)
    return y0 - slope * x0, slope


def _at(results: dict, value, size: int = TEN_MILLION) -> float | None:
    fit = _per_image(results, value)
    return None if fit is None else fit[0] + fit[1] * size


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _memory_at_ten_million(results: dict) -> str:
    """Compaction's peak at 10M against the machine: its anonymous memory must fit; the rest is the old build's
    mapped pages, which the kernel can drop (and read again, slowly)."""
    peak = _at(results, lambda f: f["compaction"]["peak_rss_mb"])
    anonymous = _at(results, lambda f: f["compaction"].get("peak_anonymous_mb"))
    if peak is None or anonymous is None:
        return "Two sizes or more are needed to extrapolate memory to 10,000,000 images."
    have_gb = results["machine"]["memory_gb"]
    verdict = ("more than this machine has" if anonymous / 1024 > have_gb else
               "within this machine's memory, but with little room for the page cache the mapped builds need"
               if peak / 1024 > have_gb else "within this machine's memory")
    return (f"At 10,000,000 images a compaction would peak at about {peak / 1024:,.1f} GB resident, "
            f"{anonymous / 1024:,.1f} GB of it anonymous, beside the gateway, Triton and the follower: "
            f"of {have_gb:g} GB, {verdict}.")


def _ingest_cpu(results: dict) -> str:
    """What ingesting costs this machine's cores, and what that leaves the searches."""
    largest, f = _sizes(results)[-1]
    if "cpu_s" not in f["load"]:
        return ""
    per_image_ms, cores = _ingest_cpu_ms(f), results["machine"]["cores"]
    rate = results["settings"]["ingest_per_s"]
    share = per_image_ms * rate / 1000 / cores
    return (f"On {cores} cores the limit is CPU: at {largest:,} the follower and Orthanc used {per_image_ms:,.0f} ms "
            f"of CPU per image ingested, so {rate:g} images/s take about {share:.0%} of the machine, and searches "
            f"ran at {f['load']['qps_ratio']}× their idle q/s. " + _per_commit(f)
            + " Beyond that, more cores, or an encoder of its own for ingest.")


def _per_commit(f: dict) -> str:
    """The follower's CPU per commit of one image (stored one at a time) against per commit under ingest: what
    is paid per batch and what per image."""
    one, ingest = f["searchable"], f["load"]["ingest"]
    if not one.get("follower_commits") or not ingest.get("follower_commits"):
        return ""
    single = one["follower_cpu_s"] / one["follower_commits"]
    batch = f["load"]["cpu_s"]["ingesting"]["follower"] / ingest["follower_commits"]
    images = ingest["stored"] / ingest["follower_commits"]
    if images <= 1.5:
        return f"The follower used {single:.2f} CPU-s per commit of one image."
    per_image = max(batch - single, 0.0) / (images - 1)
    return (f"The follower used {single:.2f} CPU-s per commit of one image and {batch:.2f} per commit of "
            f"{images:.1f} images while ingesting: about {single - per_image:.2f} s per commit whatever it holds "
            f"(a pass's look at the feed, the commit and its fsyncs; its decoder processes and Triton client are "
            f"kept between batches) and {1000 * per_image:,.0f} ms per image; fewer, larger batches would cut the "
            "first.")


def _scaling(results: dict) -> str:
    sizes = _sizes(results)
    largest, f = sizes[-1]
    commits = ", ".join(f"{g['commits']['add']['p50_ms']} ms at {s:,}" for s, g in sizes)
    fresh = ", ".join(f"{g['searchable'].get('p50_s')} s at {s:,}" for s, g in sizes)
    compaction = ", ".join(f"{g['compaction']['seconds']} s / {g['compaction']['peak_rss_mb']:,} MB at {s:,}"
                           for s, g in sizes)
    gateway = ", ".join(f"{g['peak_rss_mb']['gateway']:,.0f} MB at {s:,}" for s, g in sizes)
    pending = f["search_c1"]
    lines = [
        "## Where each part stops scaling on this machine", "",
        f"Measured on {results['machine']['cores']} cores and {results['machine']['memory_gb']} GB; figures for "
        "10,000,000 images are straight lines through the smallest and largest sizes measured, not measurements.", "",
        f"- **Ingest** (STOW-RS, the follower's fetch, decode and encode, a commit, the gateway's refresh) reads "
        f"nothing of the base: a commit's p50 was {commits}; STOW-to-searchable p50 {fresh}. Its cost is per "
        "instance and per batch, so it scales with the ingest rate, not the archive. " + _ingest_cpu(results),
        f"- **Commits pending** are searched through an index of their own beside the build (an IVF over the "
        "build's coarse quantizer beside an IVF build), copied and grown at each refresh, and a writer reads the "
        "state they left: their cost grows with the rows pending, not with the base. Adding "
        f"{results['settings']['added']:,} rows at {largest:,}, a commit's p50 went from "
        f"{f['commits']['add_first_tenth']['p50_ms']} ms (first tenth) to {f['commits']['add_last_tenth']['p50_ms']} "
        f"ms (last tenth); one client's image search p50 was {pending['before_commits']['p50_ms']} ms before them, "
        f"{pending['commits_pending']['p50_ms']} ms with {f['commits']['pending']:,} rows pending and "
        f"{pending['after_compaction']['p50_ms']} ms once compacted. Followers compact past "
        "`index_compact_rows` (10,000 rows), which bounds both.",
        f"- **Compaction** is the step that grows with the archive: it writes the build again ({compaction}; about "
        f"{_number(_at(results, lambda g: g['compaction']['seconds']))} s and "
        f"{_number(_at(results, lambda g: g['compaction']['peak_rss_mb']))} MB at 10M). It runs off the serving "
        "path, but on the same cores and memory as the gateway.",
        f"- **Memory.** The gateway maps the build's files: its peak RSS ({gateway}) is the pages its searches "
        "touched (nprobe lists of an IVF), the rest stays in the page cache or on disk. Compaction reads every "
        "list and holds the new build whole: " + _memory_at_ten_million(results) + " An sq8 index stores about a "
        "third of the bytes (recall@10 0.98 at 1M, benchmarks/results/2026-11-29-vm-scale.md), so the same memory "
        "serves about three times the images.",
        "- **The follower** keeps every vector it has encoded in memory (its cache, indexing.chunk_cache): about "
        "1 KB per instance at 256-d, 1 GB per million instances ingested through it, besides its listing. "
        "Deletions reach it as Orthanc's notices, one confirming lookup per notice batch whatever the archive's "
        "size; the reconciliation that finds notices lost lists the PACS: on Orthanc 10,000 ids a request, about "
        "100 requests for a 1M-instance PACS, paced by `--qido-requests-per-min`.",
        f"- **10,000,000 images** would take here: `cxr index synth` about "
        f"{_number(_at(results, lambda g: g['base']['synth_s']))} s (benchmarks.scale wrote 10M 1152-d sq8 in 40 "
        "min), about 10 GB of 256-d vectors on disk, a compaction of about "
        f"{_number(_at(results, lambda g: g['compaction']['seconds']))} s with the memory above, and about an hour "
        "for the rest of the run. Not run in this session.",
        "",
        "**Beyond one machine, Milvus** changes the shape rather than the constants: inserts and deletes go to "
        "growing segments and delete bitmaps that searches see at the consistency level asked (no 0.2 s poll, no "
        "acknowledgement tied to one gateway's refresh); sealing, index building and compaction run on data and "
        "index nodes, not in the memory of the process that serves; query nodes shard a collection, so the index "
        "need not fit one machine; DiskANN or IVF_PQ keep memory below the vectors' size. The price is a cluster to "
        "run (etcd, object storage, a message queue) and its own write path's latency. The follower and "
        "DeleteStudy are unchanged: both commit through StoreBackend.apply.",
    ]
    return "\n".join(lines)


# Plot.

def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = _sizes(results)
    x = [size for size, _ in sizes]
    figure, ((fresh, commits), (load, compaction)) = plt.subplots(2, 2, figsize=(12, 8))
    for part, label in (("searchable", "STOW → searchable"), ("deleted_in_pacs", "Orthanc DELETE → gone")):
        for stat, style in (("p50_s", "-o"), ("p95_s", "--o")):
            fresh.plot(x, [f[part].get(stat) for _, f in sizes], style, label=f"{label} {stat[:3]}")
    fresh.plot(x, [f["deleted_by_rpc"].get("p95_s") for _, f in sizes], ":s", label="DeleteStudy → ack p95")
    fresh.axhline(SEARCHABLE_P95_S, color="grey", lw=0.8)
    _axes(fresh, "seconds", "freshness and deletion")
    for kind in ("add", "delete"):
        for stat, style in (("p50_ms", "-o"), ("p95_ms", "--o")):
            commits.plot(x, [f["commits"][kind].get(stat) for _, f in sizes], style, label=f"{kind} {stat[:3]}")
    _axes(commits, "ms per commit of 10 rows", "commit cost against the base")
    width = 0.35
    positions = range(len(sizes))
    load.bar([p - width / 2 for p in positions], [f["load"]["idle"]["qps"] for _, f in sizes], width, label="idle")
    load.bar([p + width / 2 for p in positions], [f["load"]["ingesting"]["qps"] for _, f in sizes], width,
             label=f"ingesting {results['settings']['ingest_per_s']:g}/s")
    load.set_xticks(list(positions), [f"{size:,}" for size in x])
    load.set_ylabel("image queries/s")
    load.set_title("search throughput under ingest")
    load.legend(fontsize=8)
    compaction.plot(x, [f["compaction"]["seconds"] for _, f in sizes], "-o", label="seconds")
    compaction.plot(x, [f["compaction"]["peak_rss_mb"] / 1000 for _, f in sizes], "-s", label="peak RSS GB")
    _axes(compaction, "seconds / GB", "cxr index compact")
    figure.suptitle("Living FAISS index on this machine")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _axes(axes, ylabel: str, title: str) -> None:
    axes.set_xscale("log")
    axes.set_xlabel("images in the base")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
