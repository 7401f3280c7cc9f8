"""`cxr index build | follow | synth`: indexes from an archive on disk, a DICOMweb PACS, or synthetic vectors;
`cxr index delete | compact`: an administrator's deletions, and folding the commits into the build;
`cxr index calibrate`: the finding suggestions' calibration, fitted on the archive's validation split."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

from cxr import registry
from cxr.settings import Settings
from cxr_cli.exit_codes import UsageError


def cmd_index_build(args, settings: Settings) -> int:
    from cxr.catalog import ExportedModel
    from indexing.build import BuildOptions, build_index

    settings = _with_store(args, settings)
    if args.dicomweb is not None:
        return _index_build_pacs(args, settings)
    model_name = args.model or settings.model
    records, source = archive_records(args)
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
    from indexing.pacs_reports import ReportCounts

    if args.reports_csv or args.projections_csv or args.labels_csv or args.manifest or args.images_dir:
        raise UsageError("--dicomweb reads the archive from the PACS: leave out --reports-csv, --projections-csv, "
                         "--labels-csv, --manifest and --images-dir")
    model_name = args.model or settings.model
    model = ExportedModel.load(settings.model_repository, model_name)
    output_dir = args.output_dir or settings.index_path(model_name)
    backend = _store_backend(settings, output_dir) if settings.index_backend != "faiss" else None
    with _pacs(args, settings) as pacs:
        query = _pacs_query(args)
        print(f"listing {query.describe()} on {pacs.shown}" + (f" (at most {args.limit})" if args.limit else ""))
        manifest = build_from_pacs(pacs, query, model, settings, output_dir, _build_options(args), backend,
                                   intake=_report_intake(settings, model_name))
    where = backend.where(model_name) if backend else output_dir
    print(f"indexed {manifest['count']} of {manifest['archive_images']} instances with {model_name} into {where} "
          f"({manifest['index_type']}, {manifest['dim']}-d): {manifest['new']} new, {manifest['kept']} kept, "
          f"{manifest['skipped']} skipped" + ("" if backend else f", listed in {output_dir / 'skipped.csv'}")
          + f"; vectors cached in {cache_dir(output_dir)}; {ReportCounts(**manifest['reports'])}")
    return 0


def _report_intake(settings: Settings, model_name: str):
    """Opens the model's report intake when the PACS build finds its first SR report (not before: a PACS
    without reports leaves no ledger behind)."""
    from cxr_cli import report_commands

    return lambda: report_commands.intake(settings, model_name)


def cmd_index_follow(args, settings: Settings) -> int:
    """Follow a PACS: instances stored or deleted there are committed to the index in batches."""
    from cxr.catalog import ExportedModel
    from indexing.dicomweb_build import Follower, FollowOptions

    if args.deletions_listen and args.once:
        raise UsageError("--deletions-listen keeps listening for Orthanc's notices: drop --once, or drop "
                         "--deletions-listen (a one-shot run finds deletions by reconciling)")
    settings = _with_store(args, settings)
    model_name = args.model or settings.model
    model = ExportedModel.load(settings.model_repository, model_name)
    output_dir = args.output_dir or settings.index_path(model_name)
    backend = _store_backend(settings, output_dir) if settings.index_backend != "faiss" else None
    follow = FollowOptions(interval_s=args.interval, batch=args.batch, once=args.once,
                           orthanc_url=args.orthanc_url or "", qido_requests_per_min=args.qido_requests_per_min,
                           reconcile_s=args.reconcile_interval)
    with _pacs(args, settings) as pacs, _deletion_listener(args, settings) as notices:
        follower = Follower(pacs, _pacs_query(args), model, settings, output_dir, _build_options(args), follow, backend,
                            log=lambda line: print(line, flush=True), intake=_report_intake(settings, model_name),
                            notices=notices)
        how = (f"Orthanc's change feed every {follower.interval_s:g} s" if follower.feed
               else f"QIDO-RS every {follower.interval_s:g} s")
        if notices is not None:
            how += (f" and deletion notices posted to {notices.url}"
                    + (" with the token" if settings.deletion_notices_token else " (no token asked)"))
        print(f"following {pacs.shown} through {how} into {output_dir}" + ("" if args.once else "; Ctrl-C stops"),
              flush=True)
        try:
            follower.run()
        except KeyboardInterrupt:
            print("stopped; the next `cxr index follow` goes on from the last saved change", flush=True)
    return 0


def _deletion_listener(args, settings: Settings):
    """The listener of --deletions-listen, or nothing."""
    from indexing.pacs_notices import DeletionListener

    if not args.deletions_listen:
        return contextlib.nullcontext()
    return DeletionListener.at(args.deletions_listen, settings.deletion_notices_token)


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

    from indexing import synthetic

    settings = _with_store(args, settings)
    name, dim, manifest = _synth_model(args, settings)
    backend = _store_backend(settings, args.output_dir)
    started = time.perf_counter()
    written = synthetic.write(backend, name, dim, args.count, args.index_type, manifest, args.seed, args.rerank)
    unserved = "; no gateway serves it (--unexported)" if args.unexported else ""
    print(f"wrote {written['count']} synthetic {dim}-d vectors ({written['index_type']}"
          f"{', re-ranked' if args.rerank else ''}) for {name} into {backend.where(name)} "
          f"in {time.perf_counter() - started:.0f} s{unserved}")
    return 0


def _synth_model(args, settings: Settings) -> tuple[str, int, dict]:
    """The model's name, dimension and what the manifest records of its export: the checksum the gateway's
    check_model compares, or nothing with --unexported (sizing only: a gateway refuses that index)."""
    spec = registry.get_model(args.model or settings.model)
    if args.unexported:
        return spec.name, spec.embed_dim, {"dim": spec.embed_dim}
    model = _served_export(settings, spec.name)
    return model.name, model.embed_dim, {"dim": model.embed_dim, "export_sha256": model.export_sha256}


def _served_export(settings: Settings, name: str):
    """The export a gateway would serve for `name`; refused when there is none, as `cxr index build` does
    (exporting here would hide a download and a conversion inside a command meant to be quick)."""
    from cxr.catalog import ExportedModel
    from cxr.errors import UnknownModelError

    try:
        return ExportedModel.load(settings.model_repository, name)
    except UnknownModelError as exc:  # its message names the model and the repository
        raise UnknownModelError(
            f"{str(exc).rstrip('.')} (or `cxr export --model {name}`), then `cxr index synth` again: the gateway "
            "only serves an index that records the export it searches with; or add --unexported to size an index "
            "no gateway serves.") from exc


def cmd_index_delete(args, settings: Settings) -> int:
    """One study's images or one image, committed through the store backend as `cxr index build` writes: done
    once committed; every gateway stops returning them within index_changes_poll_s."""
    from cxr.store.deletions import Deletion

    settings = _with_store(args, settings)
    model_name = registry.get_model(args.model or settings.model).name
    deletion = Deletion.study(args.study) if args.study is not None else Deletion.image(args.image)
    with _backend(settings) as backend:
        where = backend.where(model_name)
        committed = deletion.done(backend.apply(model_name, deletion.change()), model_name)
    print(f"deleted {committed.deleted} image{'' if committed.deleted == 1 else 's'} from the {model_name} index "
          f"at {where} (generation {committed.generation}); every gateway stops returning "
          f"{'it' if committed.deleted == 1 else 'them'} within {settings.index_changes_poll_s:g} s")
    return 0


def cmd_index_compact(args, settings: Settings) -> int:
    """Fold the commits made since the build into it, off the serving path (the backend's compact)."""
    settings = _with_store(args, settings)
    model_name = registry.get_model(args.model or settings.model).name
    with _backend(settings) as backend:
        where, pending = backend.where(model_name), backend.pending(model_name)
        manifest = backend.compact(model_name)
    if manifest is None:
        print(f"nothing to fold: the {model_name} index at {where} has no commits since its build")
    else:
        print(f"folded the commits into the {model_name} index at {where} ({pending} rows added or deleted since "
              f"its build): {manifest['count']} images")
    return 0


def cmd_index_calibrate(args, settings: Settings) -> int:
    """Fit the finding suggestions' calibration on the archive's validation split (by patient, as `cxr train`
    holds it out and the benchmarks measure) and keep it with the model's index in service."""
    from cxr.catalog import ExportedModel
    from indexing.build import BuildOptions
    from indexing.calibration import calibrate
    from training.data import examples_from, split_by_patient

    settings = _with_store(args, settings)
    model_name = registry.get_model(args.model or settings.model).name
    records, source = archive_records(args)
    model = ExportedModel.load(settings.model_repository, model_name)
    valid = [e.record for e in split_by_patient(examples_from(records), args.valid_fraction, args.seed)[1]]
    split = f"{source}: by patient, seed {args.seed}, fraction {args.valid_fraction:g} ({len(valid)} images)"
    with _backend(settings) as backend:
        calibration = calibrate(valid, model, settings, backend, split, options=BuildOptions(workers=args.workers))
        where = backend.where(model_name)
    by_k = ", ".join(f"k={k}: {auc}" for k, auc in calibration.fitted["mean_auc_by_k"].items())
    methods = [label_map.method for label_map in calibration.maps.values()]
    print(f"calibrated the {model_name} index at {where} on {calibration.fitted['queries']} validation images "
          f"(their own patients' images left out of their neighbours): k = {calibration.k} (mean AUC {by_k}); "
          f"{len(methods)} findings, {methods.count('isotonic')} isotonic, {methods.count('platt')} Platt")
    return 0


@contextlib.contextmanager
def _backend(settings: Settings):
    """The settings' store backend (cxr.store.factory), closed after use."""
    from cxr.store import factory

    backend = factory.backend(settings)
    try:
        yield backend
    finally:
        backend.close()


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


def archive_records(args):
    from cxr import archives

    if args.reports_csv or args.projections_csv:
        if not (args.reports_csv and args.projections_csv and args.images_dir):
            raise UsageError("an IU-Xray archive needs --reports-csv, --projections-csv and --images-dir")
        return archives.iu_xray(args.reports_csv, args.projections_csv, args.images_dir), str(args.reports_csv.parent)
    if args.labels_csv:
        return archives.nih_labels(args.labels_csv, args.images_dir or args.labels_csv.parent), str(args.labels_csv)
    if args.manifest:
        return archives.manifest(args.manifest, args.images_dir), str(args.manifest)
    raise UsageError("name an archive: --reports-csv/--projections-csv/--images-dir (IU-Xray), "
                     "--labels-csv (NIH style) or --manifest (CSV or JSONL)")

