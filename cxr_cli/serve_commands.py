"""`cxr models`, `cxr export`, `cxr serve` and `cxr stop`: what is exported, and the served stack."""

from __future__ import annotations

import sys

from cxr import registry
from cxr.errors import CxrError
from cxr.manifest import read_export_manifest
from cxr.settings import Settings

TRITON_MODES = ("local", "external")


def _triton_ready(settings: Settings, towers: list[str]) -> dict[str, bool] | None:
    """Ready state of each tower in Triton, or None when no Triton answers. Asks the open health API,
    so it needs no admin key."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from cxr.triton.request import connection

    client = grpcclient.InferenceServerClient(**connection(settings))
    try:
        if not client.is_server_live(client_timeout=2.0):
            return None
    except InferenceServerException:
        return None

    def ready(name: str) -> bool:
        try:
            return client.is_model_ready(name, client_timeout=2.0)
        except InferenceServerException:
            return False

    try:
        return {name: ready(name) for name in towers}
    finally:
        client.close()


def cmd_models(args, settings: Settings) -> int:
    names = registry.list_models(include_twins=not args.no_twins)
    towers = [t for name in names for t in (registry.get_model(name).image_model, registry.get_model(name).text_model)]
    ready = _triton_ready(settings, towers)
    rows = [("", "model", "family", "image", "dim", "text", "exported", "in Triton", "when to use")]
    for name in names:
        spec = registry.get_model(name)
        manifest = read_export_manifest(settings.model_repository, name)
        exported = f"yes ({manifest['precision']}, {manifest['target']})" if manifest else "no"
        serving = "-" if ready is None else (
            "ready" if ready.get(spec.image_model) and ready.get(spec.text_model) else "not loaded")
        rows.append(("*" if name == settings.model else "", name, spec.family.name, str(spec.image_size),
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

