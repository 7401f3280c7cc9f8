"""`cxr models`, `cxr export`, `cxr serve` and `cxr stop`: what is exported, and the served stack."""

from __future__ import annotations

import json
import sys

from cxr import registry
from cxr.errors import CxrError
from cxr.manifest import read_export_manifest
from cxr.settings import Settings

TRITON_MODES = ("local", "external")


def cmd_models(args, settings: Settings) -> int:
    from cxr.triton.readiness import towers_ready

    specs = [registry.get_model(name) for name in registry.list_models(include_twins=not args.no_twins)]
    ready = towers_ready(settings, [tower for spec in specs for tower in (spec.image_model, spec.text_model)])
    models = [_model_row(spec, settings, ready) for spec in specs]
    if args.json:
        triton = {"url": settings.triton_grpc_url, "up": ready is not None}
        print(json.dumps({"active": settings.model, "triton": triton, "models": models}, indent=2))
        return 0
    rows = [("", "model", "family", "image", "dim", "text", "exported", "in Triton", "when to use")]
    for m in models:
        exported = f"yes ({m['exported']['precision']}, {m['exported']['target']})" if m["exported"] else "no"
        serving = "-" if m["ready"] is None else "ready" if m["ready"] else "not loaded"
        rows.append(("*" if m["active"] else "", m["name"], m["family"], str(m["image_size"]), str(m["embed_dim"]),
                     f"{m['context_length']} {m['tokenizer']}", exported, serving, m["use"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\n* active model (set CXR_MODEL or `model` in cxr.toml). Triton at {settings.triton_grpc_url}: "
          + ("not running (`make serve`)" if ready is None else "up"))
    return 0


def _model_row(spec, settings: Settings, ready: dict[str, bool] | None) -> dict:
    """One model as `cxr models --json` gives it (and the table shows it): `ready` is None when Triton is down."""
    manifest = read_export_manifest(settings.model_repository, spec.name)
    return {"name": spec.name, "active": spec.name == settings.model, "family": spec.family.name,
            "image_size": spec.image_size, "embed_dim": spec.embed_dim, "context_length": spec.context_length,
            "tokenizer": spec.tokenizer, "twin": spec.is_twin,
            "exported": {"precision": manifest["precision"], "target": manifest["target"]} if manifest else None,
            "ready": None if ready is None else bool(ready.get(spec.image_model) and ready.get(spec.text_model)),
            "use": spec.use}


def cmd_export(args, settings: Settings) -> int:
    from export.repository import export_model, write_configs

    spec = registry.get_model(args.model or settings.model)
    if args.config_only:
        write_configs(spec, settings, args.target, args.tensorrt)
        print(f"wrote {args.target} config.pbtxt for {spec.name}")
        return 0
    export_model(spec, settings, checkpoint=args.checkpoint, target=args.target, precision=args.precision,
                 tensorrt=args.tensorrt)
    return 0


def cmd_serve(args, settings: Settings) -> int:
    """Triton, then the gateway in front of it, supervised: a crashed child is started again. With
    `--triton external`, the gateway alone, once the Triton something else started is ready."""
    from cxr_cli.supervisor import Supervisor
    from cxr.triton import server_process
    from gateway import tls

    tls.check_exposure(settings, settings.gateway_address)  # before anything starts: say why at once
    if args.detach:
        return _serve_detached(args, settings)
    external = args.triton == "external"
    supervisor = Supervisor(settings, args.timeout, external_triton=external)
    if external:
        print(f"gateway only, against the Triton at {', '.join(settings.triton_endpoints)} (started elsewhere); "
              f"waiting up to {args.timeout:.0f} s for {settings.model} to be ready there", flush=True)
    else:
        models = server_process.check_repository(settings.model_repository)
        print(f"starting Triton with {len(models)} models; log: {settings.run_dir / server_process.LOG_FILE}",
              flush=True)
    status = supervisor.start()
    _print_gateway_status(settings, status, supervisor.gateway.log_file)
    print("supervising the gateway; Ctrl-C or `cxr stop` stops it (Triton keeps running)" if external else
          "supervising Triton and the gateway; Ctrl-C or `cxr stop` stops both", flush=True)
    return supervisor.run()


def _serve_detached(args, settings: Settings) -> int:
    """`cxr serve` itself in the background, with its output in <run_dir>/serve.log."""
    import os
    import subprocess

    from cxr_cli.supervisor import SUPERVISOR, wait_recorded
    from cxr.triton import server_process
    from cxr import gateway_process

    if args.triton == "local":
        server_process.check_repository(settings.model_repository)
        server_process.check_ports(settings)
    gateway_process.check_port(settings)
    log_file = settings.run_dir / "serve.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    offset = log_file.stat().st_size if log_file.exists() else 0
    command = [sys.executable, "-m", "cxr_cli", "serve", "--timeout", str(args.timeout), "--triton", args.triton]
    with log_file.open("ab") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                 env=dict(os.environ))
    try:
        wait_recorded(settings.run_dir, SUPERVISOR, child, args.timeout + 120)
    finally:
        with log_file.open("rb") as log:
            log.seek(offset)
            print(log.read().decode(errors="replace").rstrip())
    if child.poll() is not None:
        raise CxrError(f"`cxr serve` exited with status {child.returncode}; see {log_file}")
    print(f"running in the background (pid {child.pid}); stop {'it' if args.triton == 'external' else 'both'} "
          "with `cxr stop`")
    return 0


def page_url(settings: Settings) -> str:
    """Where a browser opens the search page (the gateway's HTTP port)."""
    host = f"[{settings.gateway_host}]" if ":" in settings.gateway_host else settings.gateway_host
    return f"{'https' if settings.tls else 'http'}://{host}:{settings.http_port}/"


def _print_gateway_status(settings: Settings, status: int, log_file) -> None:
    from grpc_health.v1 import health_pb2

    state = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"gateway on {settings.gateway_address}: {state}; log: {log_file}")
    if settings.http_port:
        print(f"search page: {page_url(settings)}")
    if status != health_pb2.HealthCheckResponse.SERVING:
        print(f"  (SERVING once {settings.model} is exported and indexed: "
              f"`cxr index build --model {settings.model} ...`)")


def _recorded_triton(settings: Settings) -> str:
    """"external" when the running `cxr serve` did not start its Triton, else "local"."""
    import json

    from cxr_cli.supervisor import SUPERVISOR

    try:
        return json.loads((settings.run_dir / f"{SUPERVISOR}.json").read_text()).get("triton", "local")
    except (OSError, ValueError):
        return "local"


def cmd_stop(args, settings: Settings) -> int:
    from cxr import processes
    from cxr_cli.supervisor import SUPERVISOR
    from cxr.triton import server_process
    from cxr import gateway_process

    grace = settings.drain_grace_s + 30  # the gateway drains, then Triton exits
    external = _recorded_triton(settings) == "external"
    stopped = processes.stop_recorded(settings.run_dir, SUPERVISOR, grace)
    # Children left by a supervisor that was killed, or by an older `cxr serve --detach`:
    orphans = [name for name in (gateway_process.NAME, server_process.NAME)
               if processes.stop_recorded(settings.run_dir, name, grace)]
    if stopped or orphans:
        what = "stopped the gateway (the external Triton keeps running)" if external else "stopped gateway and triton"
        print(what + (f" (and orphaned {', '.join(orphans)})" if stopped and orphans else ""))
    else:
        print(f"nothing recorded as running in {settings.run_dir}")
    return 0

