"""`cxr train` and `cxr compare`: training a model, and measuring models the way they are deployed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from cxr import registry
from cxr.errors import FailedPreconditionError, InvalidArgumentError
from cxr.settings import Settings
from cxr_cli.index_commands import archive_records
from training.config import FINE_TUNE_LR, SCRATCH_LR, TrainConfig


def cmd_train(args, settings: Settings) -> int:
    from export.repository import resolve_source
    from training.data import examples_from
    from training.trainer import CHECKPOINT_DIR, STATE_FILE, Trainer

    spec = registry.get_model(args.model or settings.model)
    if (args.out / STATE_FILE).exists() and not args.resume:
        raise InvalidArgumentError(f"{args.out} already holds a training run: add --resume to continue it, or pick a "
                                   "new --out")
    records, source = archive_records(args)
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
        raise FailedPreconditionError("`cxr compare` runs the benchmarks of a source checkout: clone cxr-retrieval, "
                                      "run `make setup`, then `make bench` there")
    if str(checkout) not in sys.path:
        sys.path.append(str(checkout))  # an editable install maps only the packages its wheel holds
    return importlib.import_module("benchmarks.compare")


def cmd_compare(args, settings: Settings) -> int:
    run = _checkout_benchmarks().run
    archive = None
    if args.reports_csv or args.projections_csv or args.labels_csv or args.manifest:
        records, source = archive_records(args)
        readable = [r for r in records if r.path.is_file()]
        if not readable:
            raise InvalidArgumentError(f"none of the {len(records)} images of {source} exist: check --images-dir")
        archive = (readable[:args.limit], source)
    run(args.model or [settings.model], args.profile, args.seed, archive=archive)
    return 0

