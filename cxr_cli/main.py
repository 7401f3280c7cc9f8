"""`cxr`: the command line of cxr-retrieval (models, export, serve, stop, index, train, search)."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import replace
from pathlib import Path

from cxr import registry
from cxr.errors import CxrError
from cxr.manifest import read_export_manifest
from cxr.settings import Settings, load_settings
from cxr_cli import security
from training.config import FINE_TUNE_LR, SCRATCH_LR, TrainConfig

TRAIN_DEFAULTS = TrainConfig()


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
    """Triton, then the gateway in front of it, supervised: a crashed child is started again."""
    from cxr_cli.supervisor import Supervisor
    from cxr.triton import server_process
    from gateway import tls

    tls.check_exposure(settings, settings.gateway_address)  # before anything starts: say why at once
    if args.detach:
        return _serve_detached(args, settings)
    supervisor = Supervisor(settings, args.timeout)
    models = server_process.check_repository(settings.model_repository)
    print(f"starting Triton with {len(models)} models; log: {settings.run_dir / server_process.LOG_FILE}", flush=True)
    status = supervisor.start()
    _print_gateway_status(settings, status, supervisor.gateway.log_file)
    print("supervising Triton and the gateway; Ctrl-C or `cxr stop` stops both", flush=True)
    return supervisor.run()


def _serve_detached(args, settings: Settings) -> int:
    """`cxr serve` itself in the background, with its output in <run_dir>/serve.log."""
    import os
    import subprocess

    from cxr_cli.supervisor import SUPERVISOR, wait_recorded
    from cxr.triton import server_process
    from gateway import process as gateway_process

    server_process.check_repository(settings.model_repository)
    server_process.check_ports(settings)
    gateway_process.check_port(settings)
    log_file = settings.run_dir / "serve.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    offset = log_file.stat().st_size if log_file.exists() else 0
    with log_file.open("ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "cxr_cli", "serve", "--timeout", str(args.timeout)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
    try:
        wait_recorded(settings.run_dir, SUPERVISOR, child, args.timeout + 120)
    finally:
        with log_file.open("rb") as log:
            log.seek(offset)
            print(log.read().decode(errors="replace").rstrip())
    if child.poll() is not None:
        raise CxrError(f"`cxr serve` exited with status {child.returncode}; see {log_file}")
    print(f"running in the background (pid {child.pid}); stop both with `cxr stop`")
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


def cmd_stop(args, settings: Settings) -> int:
    from cxr import processes
    from cxr_cli.supervisor import SUPERVISOR
    from cxr.triton import server_process
    from gateway import process as gateway_process

    grace = settings.drain_grace_s + 30  # the gateway drains, then Triton exits
    stopped = processes.stop_recorded(settings.run_dir, SUPERVISOR, grace)
    # Children left by a supervisor that was killed, or by an older `cxr serve --detach`:
    orphans = [name for name in (gateway_process.NAME, server_process.NAME)
               if processes.stop_recorded(settings.run_dir, name, grace)]
    if stopped or orphans:
        print("stopped gateway and triton" + (f" (and orphaned {', '.join(orphans)})" if stopped and orphans else ""))
    else:
        print(f"nothing recorded as running in {settings.run_dir}")
    return 0


def cmd_index_build(args, settings: Settings) -> int:
    from cxr.catalog import ExportedModel
    from indexing.build import BuildOptions, build_index

    settings = _with_store(args, settings)
    if args.dicomweb is not None:
        return _index_build_pacs(args, settings)
    model_name = args.model or settings.model
    records, source = _archive_records(args)
    model = ExportedModel.load(settings.model_repository, model_name)
    output_dir = args.output_dir or settings.index_path(model_name)
    missing = sum(not r.path.exists() for r in records)
    print(f"{len(records)} images in {source}" + (f"; {missing} of {len(records)} images missing" if missing else ""))
    options = BuildOptions(batch_size=args.batch_size, workers=args.workers, index_type=args.index_type,
                           rerank=args.rerank, use_gpu=args.use_gpu)
    backend = _store_backend(settings, output_dir) if settings.index_backend != "faiss" else None
    manifest = build_index(records, model, settings, output_dir, options, source=source, backend=backend)
    where = backend.where(model_name) if backend else output_dir
    print(f"indexed {manifest['count']} of {len(records)} images with {model_name} into {where} "
          f"({manifest['index_type']}, {manifest['dim']}-d); {manifest['skipped']} skipped"
          + ("" if backend else f", listed in {output_dir / 'skipped.csv'}"))
    return 0


def _index_build_pacs(args, settings: Settings) -> int:
    """`cxr index build --dicomweb`: the PACS's matching instances, only those not encoded yet fetched."""
    from cxr.catalog import ExportedModel
    from indexing.dicomweb_build import build_from_pacs, cache_dir

    if args.reports_csv or args.projections_csv or args.labels_csv or args.manifest or args.images_dir:
        raise CxrError("--dicomweb reads the archive from the PACS: leave out --reports-csv, --projections-csv, "
                       "--labels-csv, --manifest and --images-dir")
    model_name = args.model or settings.model
    model = ExportedModel.load(settings.model_repository, model_name)
    output_dir = args.output_dir or settings.index_path(model_name)
    backend = _store_backend(settings, output_dir) if settings.index_backend != "faiss" else None
    with _pacs(args, settings) as pacs:
        query = _pacs_query(args)
        print(f"listing {query.describe()} on {pacs.shown}" + (f" (at most {args.limit})" if args.limit else ""))
        manifest = build_from_pacs(pacs, query, model, settings, output_dir, _build_options(args), backend)
    where = backend.where(model_name) if backend else output_dir
    print(f"indexed {manifest['count']} of {manifest['archive_images']} instances with {model_name} into {where} "
          f"({manifest['index_type']}, {manifest['dim']}-d): {manifest['new']} new, {manifest['kept']} kept, "
          f"{manifest['skipped']} skipped" + ("" if backend else f", listed in {output_dir / 'skipped.csv'}")
          + f"; vectors cached in {cache_dir(output_dir)}")
    return 0


def cmd_index_follow(args, settings: Settings) -> int:
    """Follow a PACS: new instances are encoded and swapped into the index in batches."""
    from cxr.catalog import ExportedModel
    from indexing.dicomweb_build import Follower, FollowOptions

    settings = _with_store(args, settings)
    model_name = args.model or settings.model
    model = ExportedModel.load(settings.model_repository, model_name)
    output_dir = args.output_dir or settings.index_path(model_name)
    backend = _store_backend(settings, output_dir) if settings.index_backend != "faiss" else None
    follow = FollowOptions(interval_s=args.interval, batch=args.batch, once=args.once,
                           orthanc_url=args.orthanc_url or "")
    with _pacs(args, settings) as pacs:
        follower = Follower(pacs, _pacs_query(args), model, settings, output_dir, _build_options(args), follow, backend,
                            log=lambda line: print(line, flush=True))
        how = "Orthanc's change feed" if follower.feed else f"QIDO-RS every {args.interval:g} s"
        print(f"following {pacs.shown} through {how} into {output_dir}" + ("" if args.once else "; Ctrl-C stops"),
              flush=True)
        try:
            follower.run()
        except KeyboardInterrupt:
            print("stopped; the next `cxr index follow` goes on from the last saved change", flush=True)
    return 0


def _pacs(args, settings: Settings):
    """The PACS of --dicomweb (or dicomweb_url) with the command line's credentials over the settings'."""
    from cxr import dicomweb

    user = args.dicomweb_user if args.dicomweb_user is not None else settings.dicomweb_user
    password = args.dicomweb_password if args.dicomweb_password is not None else settings.dicomweb_password
    token = args.dicomweb_token if args.dicomweb_token is not None else settings.dicomweb_token
    if args.dicomweb_token:  # a token on the command line wins over basic auth in the settings, and back
        user = password = ""
    elif args.dicomweb_user:
        token = ""
    return dicomweb.connect(args.dicomweb or settings.dicomweb_url, user, password, token,
                            args.dicomweb_ca or settings.dicomweb_ca)


def _pacs_query(args):
    from cxr.dicomweb import Query

    return Query.parse(args.modality, args.since or "", args.limit or 0)


def _build_options(args):
    from indexing.build import BuildOptions

    return BuildOptions(batch_size=args.batch_size, workers=args.workers, index_type=args.index_type,
                        rerank=args.rerank, use_gpu=args.use_gpu)


def cmd_index_synth(args, settings: Settings) -> int:
    import time

    from cxr.catalog import ExportedModel
    from indexing import synthetic

    settings = _with_store(args, settings)
    spec = registry.get_model(args.model or settings.model)
    manifest = {"dim": spec.embed_dim}
    if (settings.model_repository / spec.name).is_dir():  # a gateway serving this export accepts the index
        manifest["export_sha256"] = ExportedModel.load(settings.model_repository, spec.name).export_sha256
    backend = _store_backend(settings, args.output_dir)
    started = time.perf_counter()
    written = synthetic.write(backend, spec.name, spec.embed_dim, args.count, args.index_type, manifest, args.seed,
                              args.rerank)
    print(f"wrote {written['count']} synthetic {spec.embed_dim}-d vectors ({written['index_type']}"
          f"{', re-ranked' if args.rerank else ''}) for {spec.name} into {backend.where(spec.name)} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


def _with_store(args, settings: Settings) -> Settings:
    """--backend and --milvus-uri override the settings' vector store for one command."""
    overrides = {"index_backend": args.backend, "milvus_uri": args.milvus_uri}
    return replace(settings, **{k: v for k, v in overrides.items() if v})  # validates the two together


def _store_backend(settings: Settings, output_dir: Path | None):
    from cxr.store import factory
    from cxr.store.faiss_backend import FaissBackend

    if settings.index_backend == "faiss" and output_dir:
        return FaissBackend(settings.index_dir, folder=output_dir)
    return factory.backend(settings)


def _archive_records(args):
    from cxr import archives

    if args.reports_csv or args.projections_csv:
        if not (args.reports_csv and args.projections_csv and args.images_dir):
            raise CxrError("an IU-Xray archive needs --reports-csv, --projections-csv and --images-dir")
        return archives.iu_xray(args.reports_csv, args.projections_csv, args.images_dir), str(args.reports_csv.parent)
    if args.labels_csv:
        return archives.nih_labels(args.labels_csv, args.images_dir or args.labels_csv.parent), str(args.labels_csv)
    if args.manifest:
        return archives.manifest(args.manifest, args.images_dir), str(args.manifest)
    raise CxrError("name an archive: --reports-csv/--projections-csv/--images-dir (IU-Xray), "
                   "--labels-csv (NIH style) or --manifest (CSV or JSONL)")


def cmd_train(args, settings: Settings) -> int:
    from export.repository import resolve_source
    from training.data import examples_from
    from training.trainer import CHECKPOINT_DIR, STATE_FILE, Trainer

    spec = registry.get_model(args.model or settings.model)
    if (args.out / STATE_FILE).exists() and not args.resume:
        raise CxrError(f"{args.out} already holds a training run: add --resume to continue it, or pick a new --out")
    records, source = _archive_records(args)
    if args.checkpoint:
        init = args.checkpoint
    elif args.from_scratch:
        from export.families import random_checkpoint_dir

        init = str(random_checkpoint_dir(spec, settings.cache_dir / "scratch", settings.data_dir))
    else:
        init = resolve_source(spec, settings, None)
    lr = args.lr or (SCRATCH_LR if args.from_scratch else FINE_TUNE_LR)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=lr, loss=args.loss,
                         text_tuning=args.text_tuning, valid_fraction=args.valid_fraction, seed=args.seed,
                         augment=not args.no_augment)
    print(f"training {spec.name} from {init} on {source}")
    trainer = Trainer(spec, init, examples_from(records), args.out, config)
    if args.resume:
        trainer.resume()
    training = trainer.write_config(source, "scratch" if args.from_scratch else init)
    best = trainer.fit()
    checkpoint = args.out / CHECKPOINT_DIR
    print(f"best epoch {best['epoch']} (validation score {best['score']:.4f}) saved to {checkpoint}; "
          f"export it with `make export MODEL={spec.name} CHECKPOINT={checkpoint}`")
    if args.publish_to:
        from export.embedded import publish

        path = publish(checkpoint, spec, args.publish_to, dict(training, best_epoch=best["epoch"]))
        print(f"published the trained tensors to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _checkout_benchmarks():
    """benchmarks.compare from the source checkout this command runs from: the benchmarks are not in the
    wheel (they write to benchmarks/results/ and need ../shared/data), so an installed `cxr` has none."""
    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "benchmarks" / "compare.py").is_file():
        raise CxrError("`cxr compare` runs the benchmarks of a source checkout: clone cxr-retrieval, run "
                       "`make setup`, then `make bench` there")
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))  # an editable install maps only the packages its wheel holds
    return importlib.import_module("benchmarks.compare")


def cmd_compare(args, settings: Settings) -> int:
    run = _checkout_benchmarks().run
    archive = None
    if args.reports_csv or args.projections_csv or args.labels_csv or args.manifest:
        records, source = _archive_records(args)
        readable = [r for r in records if r.path.is_file()]
        if not readable:
            raise CxrError(f"none of the {len(records)} images of {source} exist: check --images-dir")
        archive = (readable[:args.limit], source)
    run(args.model or [settings.model], args.profile, args.seed, archive=archive)
    return 0


def cmd_search(args, settings: Settings) -> int:
    import grpc

    from cxr.client import RetrievalClient

    settings = replace(settings, **{name: value for name in ("ca", "client_cert", "client_key", "token")
                                    if (value := getattr(args, name)) is not None})
    filters = dict(top_k=args.top_k, model=args.model or "", projections=args.projection or [],
                   labels=args.label or [], group_by_study=args.group_by_study)
    with RetrievalClient.from_settings(settings) as client:
        try:
            if args.kind == "text":
                response = client.search_text(args.query, **filters)
            else:
                response = client.search_image(Path(args.query).read_bytes(), **filters)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
    print_hits(response)
    return 0


def print_hits(response) -> None:
    """A table of hits; accession and date when the archive came from a PACS, image counts when grouped."""
    print(f"model: {response.model}")
    dicom = any(hit.accession_number or hit.study_date for hit in response.hits)
    grouped = any(hit.image_ids for hit in response.hits)
    rows = [("rank", "score", "study", *(("accession", "date") if dicom else ()), *(("images",) if grouped else ()),
             "projection", "labels", "impression")]
    for hit in response.hits:
        rows.append((str(hit.rank), f"{hit.score:.3f}", hit.study_uid,
                     *((hit.accession_number or "-", hit.study_date or "-") if dicom else ()),
                     *((str(len(hit.image_ids)),) if grouped else ()), hit.projection or "-",
                     ", ".join(hit.labels) or "-", _clip(hit.impression or hit.findings or "-", 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    from cxr.store.index_types import INDEX_TYPES

    parser.add_argument("--index-type", choices=INDEX_TYPES, default="flat",
                        help="flat: exact (default); ivf, hnsw: approximate; sq8, ivfpq, opq: approximate and "
                             "compressed, for millions of images (see README: Scale)")
    parser.add_argument("--rerank", action="store_true",
                        help="keep the full vectors on disk to re-score a compressed index's best candidates")
    parser.add_argument("--backend", choices=("faiss", "milvus"),
                        help="vector store (default: the index_backend setting, faiss)")
    parser.add_argument("--milvus-uri", help="a Milvus Lite file (indexes/milvus.db) or http://host:19530 "
                                             "(token: CXR_MILVUS_TOKEN)")


def _add_archive_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports-csv", type=Path, help="IU-Xray indiana_reports.csv")
    parser.add_argument("--projections-csv", type=Path, help="IU-Xray indiana_projections.csv")
    parser.add_argument("--images-dir", type=Path, help="the archive's image folder")
    parser.add_argument("--labels-csv", type=Path, help="NIH ChestX-ray14-style label CSV")
    parser.add_argument("--manifest", type=Path,
                        help="CSV or JSONL: image, text, labels, study_uid, projection, patient_id")


def _add_pacs_arguments(parser: argparse.ArgumentParser, optional_url: bool) -> None:
    parser.add_argument("--dicomweb", metavar="URL", nargs="?", const="", default=None if optional_url else "",
                        help="read the archive from a DICOMweb PACS, e.g. http://pacs:8042/dicom-web "
                             "(no URL: the dicomweb_url setting)")
    parser.add_argument("--dicomweb-user", help="basic auth user (default: dicomweb_user)")
    parser.add_argument("--dicomweb-password",
                        help="basic auth password; better CXR_DICOMWEB_PASSWORD, which keeps it out of shell history")
    parser.add_argument("--dicomweb-token",
                        help="bearer token instead of basic auth; better CXR_DICOMWEB_TOKEN (out of shell history)")
    parser.add_argument("--dicomweb-ca", type=Path, help="PEM CA that signed the PACS's TLS certificate (dicomweb_ca)")
    parser.add_argument("--modality", default="", help="series of these modalities only, e.g. CR,DX (default: all)")
    parser.add_argument("--since", help="studies on or after this date, YYYYMMDD")


def _add_models(sub) -> None:
    models = sub.add_parser("models", help="list registered models: active, exported, ready in Triton")
    models.add_argument("--no-twins", action="store_true", help="hide the random-weight test twins")
    models.set_defaults(func=cmd_models)


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="export a model's towers to ONNX into the Triton model repository")
    export.add_argument("--model", help="registry name (default: the active model)")
    export.add_argument("--checkpoint", help="hub id or local directory (default: the registry's checkpoint)")
    export.add_argument("--target", choices=("local", "gpu"), default="local",
                        help="local: python backend + onnxruntime (PyPI tritonserver); gpu: NVIDIA's container")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--fp32", dest="precision", action="store_const", const="fp32",
                           help="float32 weights (overrides a registry default of int8 or fp16)")
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16",
                           help="half-precision weights, LayerNorm kept in fp32")
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8",
                           help="local target: int8 MatMul/Gemm weights (onnxruntime dynamic quantisation)")
    export.add_argument("--tensorrt", action="store_true", help="gpu target: add the TensorRT FP16 accelerator")
    export.add_argument("--config-only", action="store_true", help="only rewrite config.pbtxt (e.g. switch target)")
    export.set_defaults(func=cmd_export)


def _add_serve_and_stop(sub) -> None:
    serve = sub.add_parser("serve", help="start Triton on the model repository and wait until it is ready")
    serve.add_argument("--detach", action="store_true", help="leave Triton running in the background")
    serve.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for readiness")
    serve.set_defaults(func=cmd_serve)

    stop = sub.add_parser("stop", help="stop the Triton and gateway started with `cxr serve --detach`")
    stop.set_defaults(func=cmd_stop)


def _add_index_build(index) -> None:
    build = index.add_parser("build", help="encode an archive's images through Triton into an index")
    _add_archive_arguments(build)
    build.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    build.add_argument("--model", help="registry name (default: the active model)")
    _add_store_arguments(build)
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--workers", type=int, default=2, help="decoding processes")
    build.add_argument("--use-gpu", action="store_true",
                       help="build flat/IVF indexes on the GPU (faiss-gpu); serve with CXR_USE_GPU=1 to search there")
    _add_pacs_arguments(build, optional_url=True)
    build.add_argument("--limit", type=int, default=0, help="--dicomweb: index at most N instances (0: all)")
    build.set_defaults(func=cmd_index_build)


def _add_index_follow(index) -> None:
    follow = index.add_parser(
        "follow", help="keep an index up to date with a DICOMweb PACS: new instances are encoded and swapped in "
                       "by batches (Orthanc's change feed, else QIDO-RS polling); Ctrl-C stops, a restart goes on")
    _add_pacs_arguments(follow, optional_url=False)
    follow.add_argument("--limit", type=int, default=0, help="the first build: at most N instances (0: all)")
    follow.add_argument("--interval", type=float, default=60.0, help="seconds between two looks at the PACS")
    follow.add_argument("--batch", type=int, default=256, help="new instances per index swap")
    follow.add_argument("--once", action="store_true", help="one pass, then exit (cron, tests)")
    follow.add_argument("--orthanc-url", help="Orthanc's REST root for its change feed (default: the DICOMweb URL "
                                              "without /dicom-web); a PACS that is not Orthanc is polled by QIDO-RS")
    follow.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    follow.add_argument("--model", help="registry name (default: the active model)")
    _add_store_arguments(follow)
    follow.add_argument("--batch-size", type=int, default=32)
    follow.add_argument("--workers", type=int, default=2, help="decoding processes")
    follow.add_argument("--use-gpu", action="store_true", help="build flat/IVF indexes on the GPU (faiss-gpu)")
    follow.set_defaults(func=cmd_index_follow)


def _add_index_synth(index) -> None:
    synth = index.add_parser("synth", help="write an index of N synthetic clustered vectors (benchmarks, sizing)")
    synth.add_argument("--model", help="registry name: sets the dimension (default: the active model)")
    synth.add_argument("--count", type=int, required=True, help="images in the synthetic archive")
    synth.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    synth.add_argument("--seed", type=int, default=0)
    _add_store_arguments(synth)
    synth.set_defaults(func=cmd_index_synth)


def _add_index(sub) -> None:
    index = sub.add_parser("index", help="build a model's index from an archive").add_subparsers(
        dest="index_command", required=True)
    _add_index_build(index)
    _add_index_follow(index)
    _add_index_synth(index)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train or fine-tune a model's towers on an archive's image-text pairs")
    _add_archive_arguments(train)
    train.add_argument("--model", help="registry name (default: the active model)")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, state.pt, history.jsonl")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--checkpoint", help="start from this hub id or local directory (default: the registry's)")
    start.add_argument("--from-scratch", action="store_true",
                       help="start from random weights (the text tower stays pretrained where the registry says so)")
    train.add_argument("--epochs", type=int, default=TRAIN_DEFAULTS.epochs)
    train.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS.batch_size)
    train.add_argument("--lr", type=float,
                       help=f"peak learning rate (default: {SCRATCH_LR:g} from scratch, {FINE_TUNE_LR:g} fine-tuning)")
    train.add_argument("--loss", choices=("sigmoid", "infonce"), default=TRAIN_DEFAULTS.loss,
                       help="sigmoid: SigLIP's pairwise loss (default); infonce: CLIP's softmax loss")
    train.add_argument("--text-tuning", choices=("head", "full"), default=TRAIN_DEFAULTS.text_tuning,
                       help="head: train only the text projection over a frozen transformer (open_clip HF "
                            "text towers); full: train the whole text tower")
    train.add_argument("--valid-fraction", type=float, default=TRAIN_DEFAULTS.valid_fraction,
                       help="share of images held out for validation, split by patient")
    train.add_argument("--seed", type=int, default=TRAIN_DEFAULTS.seed)
    train.add_argument("--no-augment", action="store_true", help="no image augmentation")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument("--publish-to", type=Path,
                       help="also write the trained tensors as shipped weights (e.g. weights/cxr-mini)")
    train.set_defaults(func=cmd_train)


def _add_compare(sub) -> None:
    compare = sub.add_parser("compare", help="benchmark models side by side: quality, speed, batching, "
                                             "in-process baseline; JSON + Markdown report in benchmarks/results/. "
                                             "Default archive: the NIH sample's validation split; or name one")
    compare.add_argument("--model", action="append", help="repeatable (default: the active model)")
    compare.add_argument("--profile", choices=("quick", "full"), default="full",
                         help="quick: a few minutes; full: concurrency 1-64, longer loads")
    compare.add_argument("--seed", type=int, default=0, help="the validation split's seed")
    _add_archive_arguments(compare)
    compare.add_argument("--limit", type=int, default=1000,
                         help="rank at most this many of the archive's images (the gateway's top_k cap is 1000)")
    compare.set_defaults(func=cmd_compare)


def _add_search(sub) -> None:
    search = sub.add_parser("search", help="query the gateway and print the ranked studies")
    search.add_argument("kind", choices=("text", "image"))
    search.add_argument("query", help="free text, or an image file (PNG, JPEG, DICOM)")
    search.add_argument("--top-k", type=int, default=10)
    search.add_argument("--model", help="default: the gateway's active model")
    search.add_argument("--projection", action="append", help="keep this projection (repeatable)")
    search.add_argument("--label", action="append", help="keep images with this finding label (repeatable)")
    search.add_argument("--group-by-study", action="store_true",
                        help="one line per study, at its best image (a frontal and a lateral count once)")
    search.add_argument("--ca", type=Path, help="TLS: the CA of the gateway's certificate (CXR_CA)")
    search.add_argument("--cert", dest="client_cert", type=Path,
                        help="mutual TLS: client certificate (CXR_CLIENT_CERT)")
    search.add_argument("--key", dest="client_key", type=Path, help="mutual TLS: its private key (CXR_CLIENT_KEY)")
    search.add_argument("--token", help="a JWT or an API key (CXR_TOKEN; the variable keeps it out of shell history)")
    search.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray retrieval served by NVIDIA Triton.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_commands in (_add_models, _add_export, _add_serve_and_stop, _add_index, _add_train, _add_compare,
                         _add_search, security.add_commands):
        add_commands(sub)
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
