"""The Markdown report of a `cxr compare` run: tables, PNG plots and recommendations, all drawn
from the figures in the results JSON (nothing here is written by hand per run)."""

from __future__ import annotations

from pathlib import Path

TARGETS = {"batching_speedup": 2.0, "gateway_vs_in_process": 2.0}
DESIGNS = {"gateway": "gateway (batching on)", "gateway_no_batching": "gateway (batching off)",
           "in_process": "in-process PyTorch + FAISS"}


def write(results: dict, path: Path) -> str:
    plots = _plots(results, path)
    sections = [_header(results), _quality(results), _speed(results), _cost(results),
                "\n".join(f"![{name}]({file.name})" for name, file in plots.items()),
                "## Recommendations\n\n" + "\n".join(f"- {line}" for line in recommendations(results))]
    markdown = "\n\n".join(sections) + "\n"
    path.write_text(markdown)
    return markdown


def _header(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    return (f"# cxr-retrieval benchmark, {m.get('date', '')} on {m['host']}\n\n"
            f"{m.get('cpu', '')}, {m.get('cores', '?')} cores, {m.get('memory_gb', '?')} GB, "
            f"GPU: {m.get('gpu') or 'none'}. "
            f"Profile `{s['profile']}`: concurrency {', '.join(map(str, s['concurrencies']))}, at most "
            f"{s['max_requests']} requests or {s['max_seconds']:.0f} s per level, top {s['top_k']}. "
            f"Archive {s['archive']}, validation split {s['split']} ({s['validation_images']} images).")


def _quality(results: dict) -> str:
    lines = ["## Retrieval quality (through the gateway)", "",
             "| model | image→image mAP | R@1 | R@5 | R@10 | MRR | prompt→image mAP | label→image mAP "
             "| report→image mAP | report→image R@10 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        q = r["quality"]
        cells = [_cell(q, "image_to_image", key) for key in ("mAP", "R@1", "R@5", "R@10", "MRR")]
        cells += [_cell(q, task, "mAP") for task in ("text_to_image", "bare_label_to_image", "report_to_image")]
        cells.append(_cell(q, "report_to_image", "R@10"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Random-ranking baselines in brackets (exact expectations, cxr/ranking_metrics.py); - where the "
              "archive has no labels or no reports."]
    return "\n".join(lines)


def _cell(quality: dict, task: str, key: str) -> str:
    if task not in quality:
        return "-"
    return f"{quality[task]['model'][key]:.3f} ({quality[task]['random'][key]:.3f})"


def _speed(results: dict) -> str:
    lines = ["## Speed", "", "| model | query | design | " + " | ".join(
        f"c={c} p50 / p95 / p99 ms, q/s" for c in results["settings"]["concurrencies"]) + " |",
        "|---|---|---|" + "---|" * len(results["settings"]["concurrencies"])]
    for name, r in results["models"].items():
        for kind in ("text", "image"):
            for design, label in DESIGNS.items():
                cells = [f"{x.get('p50_ms', '-')} / {x.get('p95_ms', '-')} / {x.get('p99_ms', '-')}, {x['qps']}"
                         for x in r["speed"][design][kind]]
                lines.append(f"| {name} | {kind} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cost(results: dict) -> str:
    lines = ["## Cost", "", "| model | index build img/s | index MB | ONNX MB (image / text) | Triton peak RSS MB "
             "| gateway peak RSS MB |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        onnx = " / ".join(str(v) for v in r["onnx_mb"].values())
        lines.append(f"| {name} | {r['index_build'].get('images_per_s', '-')} | {r['index_mb']} | {onnx} | "
                     f"{r['triton_rss_mb']} | {r['gateway_rss_mb']} |")
    return "\n".join(lines)


def _at(levels: list[dict], concurrency: int) -> dict | None:
    return next((x for x in levels if x["concurrency"] == concurrency), None)


def _ratio(a: dict | None, b: dict | None) -> float | None:
    return round(a["qps"] / b["qps"], 2) if a and b and b["qps"] else None


def recommendations(results: dict) -> list[str]:
    models = results["models"]
    c = 16 if 16 in results["settings"]["concurrencies"] else max(results["settings"]["concurrencies"])
    lines = [_which_model_when(name, r) for name, r in models.items()]
    for name, r in models.items():
        q = r["quality"]
        beats = [task for task in ("image_to_image", "text_to_image", "report_to_image")
                 if task in q and q[task]["model"]["mAP"] > q[task]["random"]["mAP_p95"]]
        if not beats:
            lines.append(f"{name} ranks at chance here (mAP within random's 95th percentile on every task): "
                         "plumbing only, do not deploy it.")
        else:
            margins = ", ".join(f"{t.replace('_', ' ')} mAP {q[t]['model']['mAP']:.3f} vs random "
                                f"{q[t]['random']['mAP']:.3f}" for t in beats)
            lines.append(f"{name} beats chance beyond random's 95th percentile ({margins}).")
    if len(models) > 1:
        for task, label in (("image_to_image", "image→image"), ("text_to_image", "text→image"),
                            ("report_to_image", "report→image")):
            scored = {n: r["quality"][task]["model"]["mAP"] for n, r in models.items() if task in r["quality"]}
            if scored:
                best = max(scored, key=scored.get)
                lines.append(f"Best {label} retrieval: {best} (mAP {scored[best]:.3f}).")
    for name, r in models.items():
        speed = r["speed"]
        for kind in ("image", "text"):
            batching = _ratio(_at(speed["gateway"][kind], c), _at(speed["gateway_no_batching"][kind], c))
            served = _ratio(_at(speed["gateway"][kind], c), _at(speed["in_process"][kind], c))
            if batching is not None:
                verdict = "keep it on" if batching >= 1.2 else "it buys little on this machine"
                target = "meets" if batching >= TARGETS["batching_speedup"] else "misses"
                lines.append(f"{name}, {kind} queries at concurrency {c}: dynamic batching gives {batching}x the "
                             f"throughput without it ({target} the {TARGETS['batching_speedup']:.0f}x target); "
                             f"{verdict}.")
            if served is not None:
                target = "meets" if served >= TARGETS["gateway_vs_in_process"] else "misses"
                lines.append(f"{name}, {kind} queries at concurrency {c}: the served stack gives {served}x the "
                             f"in-process design's throughput ({target} the "
                             f"{TARGETS['gateway_vs_in_process']:.0f}x target).")
    return lines


def _which_model_when(name: str, r: dict) -> str:
    """The registry's "use" for the model, with what this run measured of it."""
    single = {kind: _at(r["speed"]["gateway"][kind], 1) for kind in ("text", "image")}
    speed = ", ".join(f"{kind} query {x['p50_ms']} ms p50" for kind, x in single.items() if x and "p50_ms" in x)
    use = r.get("use") or _registry_use(name)
    return f"{name} ({use}): {speed or 'no single-client figure'} alone on this machine."


def _registry_use(name: str) -> str:
    from cxr import registry
    from cxr.errors import UnknownModelError

    try:
        return registry.get_model(name).use
    except UnknownModelError:
        return "not in this registry"


def _plots(results: dict, path: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    concurrencies = results["settings"]["concurrencies"]
    for metric, label in (("p50_ms", "p50 latency (ms)"), ("qps", "queries/s")):
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for axis, kind in zip(axes, ("text", "image")):
            for name, r in results["models"].items():
                designs = DESIGNS if metric == "qps" else {"gateway": DESIGNS["gateway"]}
                for design, style in zip(designs, ("-o", "--s", ":^")):
                    values = [(_at(r["speed"][design][kind], c) or {}).get(metric) for c in concurrencies]
                    axis.plot(concurrencies, values, style, label=f"{name}: {DESIGNS[design]}")
            axis.set(xscale="log", xlabel="concurrent clients", ylabel=label, title=f"{kind} queries")
            axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axes[0].legend(fontsize=7)
        figure.tight_layout()
        files[label] = path.with_name(f"{path.stem}-{'latency' if metric == 'p50_ms' else 'throughput'}.png")
        figure.savefig(files[label], dpi=110)
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(7, 4))
    names = list(results["models"])
    for offset, task in ((-0.2, "image_to_image"), (0.2, "text_to_image")):
        model = [results["models"][n]["quality"].get(task, {}).get("model", {}).get("mAP", 0) for n in names]
        random = [results["models"][n]["quality"].get(task, {}).get("random", {}).get("mAP", 0) for n in names]
        axis.bar([i + offset for i in range(len(names))], model, 0.38, alpha=0.8, label=task.replace("_", " "))
        axis.scatter([i + offset for i in range(len(names))], random, color="black", marker="_", s=400,
                     label="random" if offset > 0 else None, zorder=3)
    axis.set_xticks(range(len(names)), names)
    axis.set(ylabel="mAP", title="retrieval quality beside random ranking")
    axis.legend(fontsize=8)
    figure.tight_layout()
    files["quality"] = path.with_name(f"{path.stem}-map.png")
    figure.savefig(files["quality"], dpi=110)
    plt.close(figure)
    return files
