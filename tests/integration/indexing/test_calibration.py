"""`cxr index calibrate` through the real Triton: the NIH sample indexed, its validation split embedded and
searched, the calibration kept with the index where a store opened afterwards reads it."""

from dataclasses import replace

import pytest

from cxr import archives, suggestions
from cxr.catalog import ExportedModel
from cxr.store.faiss_backend import FaissBackend
from cxr_cli.index_commands import cmd_index_calibrate
from cxr_cli.main import build_parser
from indexing.build import BuildOptions, build_index
from support import DATA_DIR

pytestmark = pytest.mark.triton
MODEL = "cxr-mini"
NIH = DATA_DIR / "nih800"


def test_calibrate_keeps_a_calibration_fitted_on_the_validation_split(served, tmp_path, capsys):
    settings = replace(served, index_dir=tmp_path / "indexes")
    model = ExportedModel.load(settings.model_repository, MODEL)
    build_index(archives.nih_labels(NIH / "labels.csv", NIH), model, settings, settings.index_path(MODEL),
                BuildOptions(progress=False))
    args = build_parser().parse_args(["index", "calibrate", "--model", MODEL, "--labels-csv", str(NIH / "labels.csv")])
    assert cmd_index_calibrate(args, settings) == 0
    assert "calibrated the cxr-mini index" in capsys.readouterr().out
    store = FaissBackend(settings.index_dir).open(MODEL)
    calibration = store.calibration
    assert calibration.k in suggestions.K_GRID and calibration.fitted["queries"] == 200
    assert "seed 0" in calibration.fitted["split"] and calibration.fitted["export_sha256"] == model.export_sha256
    assert {"No Finding", "Effusion"} <= set(calibration.maps)
    hits = store.search(store.index.reconstruct(0)[None], calibration.k)[0]
    rows = store.rows([i for i, _ in hits])
    found = calibration.suggest([s for _, s in hits], [r["labels"] for r in rows])
    assert found and all(0 <= s.probability <= 1 and 1 <= s.neighbours <= calibration.k for s in found)
