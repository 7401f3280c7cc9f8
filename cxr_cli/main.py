"""`cxr`: the command line of cxr-retrieval: its parser and `main`; each command group is a module of its own
(serve_commands, index_commands, train_commands, search_commands, security). `main` turns an error of ours, or
the operating system's, into one line on stderr and the exit status of its kind (cxr_cli.exit_codes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr import __version__
from cxr.errors import CxrError
from cxr.settings import load_settings
from cxr_cli import backup_commands, exit_codes, report_commands, security
from cxr_cli.index_commands import (
    cmd_index_build,
    cmd_index_calibrate,
    cmd_index_compact,
    cmd_index_delete,
    cmd_index_follow,
    cmd_index_synth,
)
from cxr_cli.search_commands import cmd_search
from cxr_cli.serve_commands import TRITON_MODES, cmd_export, cmd_models, cmd_serve, cmd_stop
from cxr_cli.train_commands import cmd_compare, cmd_train
from training.config import FINE_TUNE_LR, SCRATCH_LR, TrainConfig

TRAIN_DEFAULTS = TrainConfig()


def positive_int(text: str) -> int:
    """An argparse type: a count or a size of 1 or more (0 or less would fail deep inside, or do nothing)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
    return value


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    from cxr.store.index_types import INDEX_TYPES

    parser.add_argument("--index-type", choices=INDEX_TYPES, default="flat",
                        help="flat: exact (default); ivf, hnsw: approximate; sq8, ivfpq, opq: approximate and "
                             "compressed, for millions of images (see docs/scale.md)")
    parser.add_argument("--rerank", action="store_true",
                        help="keep the full vectors on disk to re-score a compressed index's best candidates")
    _add_backend_arguments(parser)


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
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
    models.add_argument("--json", action="store_true", help="one JSON document instead of the table")
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
    what = ("start Triton and the gateway in front of it, supervised: either is restarted if it dies (with "
            "--triton external, the gateway only, against a Triton started elsewhere)")
    serve = sub.add_parser("serve", help=what, description=what[0].upper() + what[1:] + ".")
    serve.add_argument("--detach", action="store_true",
                       help="leave them running in the background (`cxr stop` stops them)")
    serve.add_argument("--timeout", type=float, default=600.0,
                       help="seconds to wait for Triton's readiness (default: 600)")
    serve.add_argument("--triton", choices=TRITON_MODES, default="local",
                       help="local: start tritonserver on the model repository; external: start the gateway only, "
                            "against the Triton at triton_host (or triton_urls, triton_dns) that something else "
                            "started (NVIDIA's container: docs/deployment.md, \"GPU hosts\"), once it has the model ready")
    serve.set_defaults(func=cmd_serve)

    what = ("stop what `cxr serve --detach` started: the gateway (it drains first), then Triton; a Triton "
            "started elsewhere (--triton external) keeps running")
    stop = sub.add_parser("stop", help=what, description=what[0].upper() + what[1:] + ".")
    stop.set_defaults(func=cmd_stop)


def _add_index_build(index) -> None:
    build = index.add_parser("build", help="encode an archive's images through Triton into an index")
    _add_archive_arguments(build)
    build.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    build.add_argument("--model", help="registry name (default: the active model)")
    _add_store_arguments(build)
    build.add_argument("--batch-size", type=positive_int, default=32)
    build.add_argument("--workers", type=int, default=2, help="decoding processes")
    build.add_argument("--use-gpu", action="store_true",
                       help="build flat/IVF indexes on the GPU (faiss-gpu); serve with CXR_USE_GPU=1 to search there")
    _add_pacs_arguments(build, optional_url=True)
    build.add_argument("--limit", type=int, default=0, help="--dicomweb: index at most N instances (0: all)")
    build.set_defaults(func=cmd_index_build)


def _add_index_follow(index) -> None:
    follow = index.add_parser(
        "follow", help="keep an index up to date with a DICOMweb PACS: instances stored or deleted there are "
                       "committed to the index by batches (Orthanc's change feed, else QIDO-RS polling, and "
                       "reconciliations with the PACS's listing); Ctrl-C stops, a restart goes on")
    _add_pacs_arguments(follow, optional_url=False)
    follow.add_argument("--limit", type=int, default=0,
                        help="the first build: at most N instances (0: all); reconciliations then add none")
    follow.add_argument("--interval", type=float,
                        help="seconds between two looks at the PACS (default: 1 on Orthanc's change feed, "
                             "60 by QIDO-RS)")
    follow.add_argument("--batch", type=positive_int, default=256, help="instances per commit to the index")
    follow.add_argument("--reconcile-interval", type=float, default=600.0,
                        help="seconds between two reconciliations with the PACS's listing, which find deletions "
                             "(on Orthanc also as soon as its count of instances falls)")
    follow.add_argument("--qido-requests-per-min", type=float, default=60.0,
                        help="the pace of a reconciliation's listing requests (QIDO-RS, or Orthanc's REST "
                             "listing): about 1,000 requests per 1M instances, 100 on Orthanc")
    follow.add_argument("--once", action="store_true", help="one pass, then exit (cron, tests)")
    follow.add_argument("--orthanc-url", help="Orthanc's REST root for its change feed (default: the DICOMweb URL "
                                              "without /dicom-web); a PACS that is not Orthanc is polled by QIDO-RS")
    follow.add_argument("--deletions-listen", metavar="HOST:PORT",
                        help="take Orthanc's deletion notices (deploy/orthanc/cxr-follow-deletions.lua) on this "
                             "address (a port alone: on 127.0.0.1) and commit them at once; the token, if any, "
                             "is the deletion_notices_token setting")
    follow.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    follow.add_argument("--model", help="registry name (default: the active model)")
    _add_store_arguments(follow)
    follow.add_argument("--batch-size", type=positive_int, default=32)
    follow.add_argument("--workers", type=int, default=2, help="decoding processes")
    follow.add_argument("--use-gpu", action="store_true", help="build flat/IVF indexes on the GPU (faiss-gpu)")
    follow.set_defaults(func=cmd_index_follow)


def _add_index_synth(index) -> None:
    synth = index.add_parser("synth", help="write an index of N synthetic clustered vectors (benchmarks, sizing)")
    synth.add_argument("--model", help="registry name: sets the dimension (default: the active model)")
    synth.add_argument("--count", type=positive_int, required=True, help="images in the synthetic archive")
    synth.add_argument("--output-dir", type=Path, help="default: <index_dir>/<model>")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--unexported", action="store_true",
                       help="for sizing a model not exported here (e.g. gated): no gateway serves this index")
    _add_store_arguments(synth)
    synth.set_defaults(func=cmd_index_synth)


def _add_index_delete(index) -> None:
    delete = index.add_parser(
        "delete", help="delete one study's images or one image from a model's index: done once committed; every "
                       "gateway stops returning them within index_changes_poll_s")
    target = delete.add_mutually_exclusive_group(required=True)
    target.add_argument("--study", metavar="UID", help="every image of this study (its study_uid, as hits name it)")
    target.add_argument("--image", metavar="ID", help="this image (its image_id, as hits name it)")
    delete.add_argument("--model", help="registry name (default: the active model)")
    _add_backend_arguments(delete)
    delete.set_defaults(func=cmd_index_delete)


def _add_index_compact(index) -> None:
    compact = index.add_parser("compact", help="fold the commits made since the build into it (gateways keep "
                                               "serving meanwhile); followers also do it past index_compact_rows")
    compact.add_argument("--model", help="registry name (default: the active model)")
    _add_backend_arguments(compact)
    compact.set_defaults(func=cmd_index_compact)


def _add_index_calibrate(index) -> None:

    calibrate = index.add_parser(
        "calibrate", help="fit the finding suggestions' calibration on the archive's validation split (by patient) "
                          "through Triton and keep it with the model's index: image queries then get suggestions")
    _add_archive_arguments(calibrate)
    calibrate.add_argument("--model", help="registry name (default: the active model)")
    calibrate.add_argument("--seed", type=int, default=TrainConfig.seed, help="the validation split's seed, as "
                           f"`cxr train` and the benchmarks split (default {TrainConfig.seed})")
    calibrate.add_argument("--valid-fraction", type=float, default=TrainConfig.valid_fraction,
                           help=f"share of the images held out (default {TrainConfig.valid_fraction})")
    calibrate.add_argument("--workers", type=positive_int, default=2, help="decoding processes")
    _add_backend_arguments(calibrate)
    calibrate.set_defaults(func=cmd_index_calibrate)


def _add_index(sub) -> None:
    index = sub.add_parser("index", help="build a model's index from an archive, delete from it, compact it")
    commands = index.add_subparsers(dest="index_command", required=True)
    for add_command in (_add_index_build, _add_index_follow, _add_index_synth, _add_index_delete, _add_index_compact,
                        _add_index_calibrate):
        add_command(commands)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train or fine-tune a model's towers on an archive's image-text pairs")
    _add_archive_arguments(train)
    train.add_argument("--model", help="registry name (default: the active model)")
    train.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, state.pt, history.jsonl")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--checkpoint", help="start from this hub id or local directory (default: the registry's)")
    start.add_argument("--from-scratch", action="store_true",
                       help="start from random weights (the text tower stays pretrained where the registry says so)")
    train.add_argument("--epochs", type=positive_int, default=TRAIN_DEFAULTS.epochs)
    train.add_argument("--batch-size", type=positive_int, default=TRAIN_DEFAULTS.batch_size)
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
    compare.add_argument("--limit", type=positive_int, default=1000,
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
    search.add_argument("--insecure", action="store_true",
                        help="without --ca the gateway is spoken to in plaintext; with a token too, only with this "
                             "flag (a gateway on loopback or a trusted network)")
    search.add_argument("--timeout", type=float, default=60.0, help="seconds the search may take, retries included")
    search.add_argument("--json", action="store_true",
                        help="one JSON document: the model and each hit's rank, score, ids, labels and report excerpt")
    search.set_defaults(func=cmd_search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray retrieval served by NVIDIA Triton.",
                                     epilog=exit_codes.epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cxr-retrieval {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_commands in (_add_models, _add_export, _add_serve_and_stop, _add_index, _add_train, _add_compare,
                         _add_search, security.add_commands, report_commands.add_commands,
                         backup_commands.add_commands):
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status (a command line argparse cannot parse exits 2 from parse_args)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, load_settings())
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_codes.of_error(exc)
    except OSError as exc:  # a file or a connection no command wrapped: the system's words, without a traceback
        print(f"error: {exit_codes.describe_os_error(exc)}", file=sys.stderr)
        return exit_codes.of_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
