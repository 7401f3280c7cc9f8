"""`cxr`: the command line of cxr-retrieval (models, export, serve, stop)."""

from __future__ import annotations

import argparse
import signal
import sys

from cxr import registry
from cxr.errors import CxrError
from cxr.manifest import read_manifest
from cxr.settings import Settings, load_settings


def _triton_ready(settings: Settings) -> dict[str, bool] | None:
    """Ready state of every model Triton knows, or None when no Triton answers."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    try:
        client = grpcclient.InferenceServerClient(settings.triton_grpc_url)
        index = client.get_model_repository_index(as_json=True, client_timeout=2.0)
    except InferenceServerException:
        return None
    return {m["name"]: m.get("state") == "READY" for m in index.get("models", [])}


def cmd_models(args, settings: Settings) -> int:
    ready = _triton_ready(settings)
    rows = [("", "model", "family", "image", "dim", "text", "exported", "in Triton", "when to use")]
    for name in registry.list_models(include_twins=not args.no_twins):
        spec = registry.get_model(name)
        manifest = read_manifest(settings.model_repository, name)
        exported = f"yes ({manifest['precision']}, {manifest['target']})" if manifest else "no"
        serving = "-" if ready is None else (
            "ready" if ready.get(spec.image_model) and ready.get(spec.text_model) else "not loaded")
        rows.append(("*" if name == settings.model else "", name, spec.family, str(spec.image_size),
                     str(spec.embed_dim), f"{spec.context_length} {spec.tokenizer}", exported, serving,
                     spec.use))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    where = settings.triton_grpc_url
    print(f"\n* active model (set CXR_MODEL or `model` in cxr.toml). Triton at {where}: "
          + ("not running (`make serve`)" if ready is None else "up"))
    return 0


def cmd_export(args, settings: Settings) -> int:
    from export.repository import export_model, write_configs

    spec = registry.get_model(args.model or settings.model)
    if args.config_only:
        write_configs(spec, settings, args.target, args.tensorrt)
        print(f"wrote {args.target} config.pbtxt for {spec.name}")
        return 0
    export_model(spec, settings, checkpoint=args.checkpoint, target=args.target, fp16=args.fp16,
                 tensorrt=args.tensorrt)
    return 0


def cmd_serve(args, settings: Settings) -> int:
    from cxr import tritonserver

    process, log_file = tritonserver.start(settings)
    models = tritonserver.check_repository(settings.model_repository)
    print(f"starting Triton with {len(models)} models; log: {log_file}")
    try:
        tritonserver.wait_ready(settings, models, process, args.timeout, log_file)
    except BaseException:
        tritonserver.stop_process(process)
        raise
    print(f"Triton ready: gRPC {settings.triton_grpc_url}, HTTP {settings.triton_http_url}, "
          f"metrics {settings.triton_host}:{settings.triton_metrics_port}")
    if args.detach:
        tritonserver.TritonProcess(process.pid, settings, log_file).record()
        print("running in the background; stop it with `cxr stop`")
        return 0
    return _serve_until_signalled(process)


def _serve_until_signalled(process) -> int:
    from cxr import tritonserver

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = process.wait()
        print(f"Triton exited with status {code}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        print("stopping Triton")
        tritonserver.stop_process(process)
        return 0


def cmd_stop(args, settings: Settings) -> int:
    from cxr import tritonserver

    stopped = tritonserver.stop_detached(settings)
    print("stopped Triton" if stopped else f"no detached Triton recorded in {settings.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray retrieval served by NVIDIA Triton.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list registered models: active, exported, ready in Triton")
    models.add_argument("--no-twins", action="store_true", help="hide the random-weight test twins")
    models.set_defaults(func=cmd_models)

    export = sub.add_parser("export", help="export a model's towers to ONNX into the Triton model repository")
    export.add_argument("--model", help="registry name (default: the active model)")
    export.add_argument("--checkpoint", help="hub id or local directory (default: the registry's checkpoint)")
    export.add_argument("--target", choices=("local", "gpu"), default="local",
                        help="local: python backend + onnxruntime (PyPI tritonserver); gpu: NVIDIA's container")
    export.add_argument("--fp16", action="store_true", help="half-precision weights, LayerNorm kept in fp32")
    export.add_argument("--tensorrt", action="store_true", help="gpu target: add the TensorRT FP16 accelerator")
    export.add_argument("--config-only", action="store_true", help="only rewrite config.pbtxt (e.g. switch target)")
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="start Triton on the model repository and wait until it is ready")
    serve.add_argument("--detach", action="store_true", help="leave Triton running in the background")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    serve.set_defaults(func=cmd_serve)

    stop = sub.add_parser("stop", help="stop a Triton started with `cxr serve --detach`")
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, load_settings())
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
