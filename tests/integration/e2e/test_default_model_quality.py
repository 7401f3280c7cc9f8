"""The shipped default model retrieves better than chance through the real stack (Triton, gateway,
FAISS, gRPC), on validation images it was not trained on (split by patient)."""

from dataclasses import replace

import pytest

from benchmarks.retrieval_quality import search_all, validation_records
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, BackgroundGateway

MODEL = "cxr-mini"


@pytest.fixture(scope="module")
def quality(served):
    records = validation_records(DATA_DIR)
    settings = replace(served, model=MODEL)
    build_index(records, ExportedModel.load(served.model_repository, MODEL), settings,
                settings.index_path(MODEL), BuildOptions(progress=False))
    background = BackgroundGateway(settings)
    try:
        with RetrievalClient(background.address) as client:
            yield search_all(client, records)
    finally:
        background.stop()


@pytest.mark.triton
@pytest.mark.parametrize("task", ["image_to_image", "text_to_image"])
def test_cxr_mini_beats_random_ranking(quality, task):
    model, random = quality[task]["model"]["mAP"], quality[task]["random"]["mAP"]
    assert model > random + 0.01, f"{task}: mAP {model:.3f} vs random {random:.3f}"


@pytest.mark.triton
def test_every_validation_label_gets_an_average_precision(quality):
    per_label = quality["text_to_image"]["model"]["per_label_AP"]
    assert "No Finding" in per_label and len(per_label) >= 10
    assert all(0.0 < ap <= 1.0 for ap in per_label.values())
