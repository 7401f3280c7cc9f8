"""The scale benchmark's Markdown tables and log-log plot, from its JSON."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend

CONCURRENCY = ("1", "16", "64")


def _store_rows(store: dict) -> list[str]:
    rows = ["| backend | dim | images | type | build s | start-up s | MB on disk | RSS MB | recall@10 | "
            "q/s @1 | p50 ms @1 | q/s @16 | p99 ms @16 | q/s @64 |", "|" + "---|" * 14]
    for key, f in sorted(store.items(), key=lambda kv: _order(kv[0])):
        backend, dim, size, index_type = key.split("/")
        if "skipped" in f:
            rows.append(f"| {backend} | {dim} | {int(size):,} | {index_type} | not tried: {f['skipped']} |" + " |" * 9)
            continue
        if "error" in f:
            rows.append(f"| {backend} | {dim} | {int(size):,} | {index_type} | {f.get('build_s')} | failed: "
                        f"{f['error'][:80]} |" + " |" * 9)
            continue
        load = f["load"]
        rows.append(f"| {backend} | {dim} | {int(size):,} | {index_type} | {f['build_s']} | {f['startup_s']} | "
                    f"{f['bytes'] / 2**20:,.0f} | {f['rss_after_mb']:,.0f} | {f['recall_at_10']:.3f} | "
                    f"{load['1']['qps']:,.0f} | {load['1'].get('p50_ms')} | {load['16']['qps']:,.0f} | "
                    f"{load['16'].get('p99_ms')} | {load['64']['qps']:,.0f} |")
    return rows


def _order(key: str):
    backend, dim, size, index_type = key.split("/")
    return backend, int(dim.rstrip("d")), int(size), index_type


def _gateway_rows(gateway: dict) -> list[str]:
    rows = ["| index | start-up s | gateway RSS MB (peak) | image q/s @16 | image p50 ms | image p50 ms @1 | "
            "text q/s | text + label filter q/s | errors |", "|" + "---|" * 9]
    for key, f in gateway.items():
        errors = sum(f[k]["errors"] for k in ("image", "text", "text_filtered"))
        rows.append(f"| {key} | {f['startup_s']} | {f['rss_peak_mb']:,.0f} | {f['image']['qps']:,.0f} | "
                    f"{f['image'].get('p50_ms')} | {f['image_c1'].get('p50_ms')} | {f['text']['qps']:,.0f} | "
                    f"{f['text_filtered']['qps']:,.0f} | {errors} |")
    return rows


def plot(store: dict, path: Path) -> None:
    figure, (latency, size) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for key, f in store.items():
        if "error" in f or "skipped" in f:
            continue
        backend, dim, count, index_type = key.split("/")
        series.setdefault(f"{backend} {index_type} {dim}", []).append(
            (int(count), f["load"]["1"].get("p50_ms") or float("nan"), f["bytes"] / 2**20))
    for name, points in sorted(series.items()):
        points.sort()
        counts = [p[0] for p in points]
        latency.plot(counts, [p[1] for p in points], marker="o", label=name)
        size.plot(counts, [p[2] for p in points], marker="o", label=name)
    for axes, label in ((latency, "p50 ms per query (concurrency 1)"), (size, "index MB on disk")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("images in the archive")
        axes.set_ylabel(label)
        axes.grid(True, which="both", alpha=0.3)
    latency.legend(fontsize=7, ncol=2)
    figure.suptitle("What archive size costs (synthetic clustered vectors, this machine)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict, json_path: Path) -> None:
    machine = results["machine"]
    lines = [f"# Scale benchmark — {machine['date']}", "",
             f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB; FAISS with "
             f"{results['threads']['faiss_omp']} threads. Command: `make bench-scale`.", ""]
    if results.get("store"):
        lines += ["## Vector store (in process, through the gateway's SearchBatcher)", "",
                  *_store_rows(results["store"]), ""]
        plot(results["store"], json_path.with_suffix(".png"))
        lines += [f"![cost against archive size]({json_path.with_suffix('.png').name})", ""]
    if results.get("gateway"):
        lines += ["## Served stack (Triton + gateway, gRPC, cxr-mini, 16 clients)", "",
                  *_gateway_rows(results["gateway"]), ""]
    json_path.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {json_path.with_suffix('.md')}")
