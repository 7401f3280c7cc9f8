"""Hits that carry DICOM identities, one hit per study, studies with patient data, thumbnails and
search options: a real gateway and Triton over an index whose rows came from a PACS-like archive."""

import io
from dataclasses import replace

import grpc
import pytest
from PIL import Image

from cxr import archives
from cxr.catalog import ExportedModel
from cxr.client import RetrievalClient
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from gateway import hits
from indexing.build import BuildOptions, build_index
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"
VIEWER = "https://pacs.example/viewer?StudyInstanceUIDs={study_instance_uid}"
IMAGES = 24  # twelve studies of a frontal and a lateral image


def _records() -> list[archives.Record]:
    nih = archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800")[:IMAGES]
    records = []
    for i, record in enumerate(nih):
        study, view = f"1.2.826.0.1.3680043.8.498.{i // 2 + 1}", ("PA", "LL")[i % 2]
        records.append(replace(
            record, image_id=f"{study}.1.{i % 2 + 1}", study_uid=study, study_instance_uid=study,
            series_instance_uid=f"{study}.1", sop_instance_uid=f"{study}.1.{i % 2 + 1}",
            accession_number=f"ACC{i // 2:04d}", study_date="20240315", view_position=view,
            projection=archives.VIEW_TO_PROJECTION[view], patient_id=f"PID-{i // 2:04d}",
            patient_name=f"Doe^Patient{i // 2}"))
    return records


@pytest.fixture(scope="module")
def pacs_gateway(served, tmp_path_factory):
    settings = replace(served, model=MODEL, index_dir=tmp_path_factory.mktemp("pacs-index"),
                       viewer_url_template=VIEWER)
    model = ExportedModel.load(settings.model_repository, MODEL)
    build_index(_records(), model, settings, settings.index_path(MODEL), BuildOptions(progress=False))
    background = BackgroundGateway(settings)
    try:
        with grpc.insecure_channel(background.address) as channel:
            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            stub.address = background.address
            yield stub
    finally:
        background.stop()


def test_hits_carry_dicom_identities_and_a_viewer_link_but_no_patient_identifier(pacs_gateway):
    response = pacs_gateway.SearchByText(pb.SearchByTextRequest(text="pleural effusion", top_k=IMAGES))
    assert len(response.hits) == IMAGES
    for hit in response.hits:
        assert hit.sop_instance_uid == hit.image_id and hit.sop_instance_uid.startswith(hit.series_instance_uid)
        assert hit.study_instance_uid == hit.study_uid and hit.accession_number.startswith("ACC")
        assert hit.study_date == "20240315" and hit.view_position in ("PA", "LL")
        assert hit.viewer_url == VIEWER.format(study_instance_uid=hit.study_instance_uid)
    assert "PID-" not in str(response) and "Doe^" not in str(response)


def test_group_by_study_gives_each_study_once_with_its_images(pacs_gateway):
    request = dict(text="pleural effusion", top_k=5)
    images = pacs_gateway.SearchByText(pb.SearchByTextRequest(text=request["text"], top_k=IMAGES)).hits
    grouped = pacs_gateway.SearchByText(pb.SearchByTextRequest(**request, group_by_study=True)).hits
    assert len(grouped) == 5 and len({h.study_uid for h in grouped}) == 5
    first_seen = list(dict.fromkeys(h.study_uid for h in images))[:5]
    assert [h.study_uid for h in grouped] == first_seen  # each study ranked by its best image
    # The images the grouping looked at: enough for one study more than the page (is there a next page?).
    fetched = images[:hits.study_fetch(5 + 1, IMAGES)]
    for rank, hit in enumerate(grouped, 1):
        expected = [h.image_id for h in fetched if h.study_uid == hit.study_uid]
        assert list(hit.image_ids) == expected and hit.image_id == expected[0] and hit.rank == rank


def test_grouping_an_image_query_puts_the_query_image_s_study_first(pacs_gateway):
    record = _records()[7]
    found = pacs_gateway.SearchByImage(pb.SearchByImageRequest(image=record.path.read_bytes(), top_k=3,
                                                               group_by_study=True)).hits
    assert found[0].study_uid == record.study_uid and found[0].image_id == record.image_id


def test_a_study_comes_with_its_patient_and_dicom_identities(pacs_gateway):
    record = _records()[4]
    study = pacs_gateway.GetStudy(pb.GetStudyRequest(study_uid=record.study_uid))
    assert (study.patient_id, study.patient_name, study.accession_number) == ("PID-0002", "Doe^Patient2", "ACC0002")
    assert study.study_instance_uid == record.study_uid and len(study.image_ids) == 2
    assert study.viewer_url == VIEWER.format(study_instance_uid=record.study_uid)


def test_a_thumbnail_is_a_png_of_the_indexed_image(pacs_gateway):
    record = _records()[0]
    thumbnail = pacs_gateway.GetThumbnail(pb.GetThumbnailRequest(image_id=record.image_id, size=48))
    image = Image.open(io.BytesIO(thumbnail.data))
    assert thumbnail.media_type == "image/png" and image.format == "PNG"
    assert image.size == (thumbnail.width, thumbnail.height) and max(image.size) == 48


@pytest.mark.parametrize("request_, code", [
    (pb.GetThumbnailRequest(image_id="1.2.3.nope"), grpc.StatusCode.NOT_FOUND),
    (pb.GetThumbnailRequest(image_id="x", size=4096), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.GetThumbnailRequest(image_id="x", model="gpt"), grpc.StatusCode.NOT_FOUND)])
def test_a_bad_thumbnail_request_gets_its_status(pacs_gateway, request_, code):
    with pytest.raises(grpc.RpcError) as error:
        pacs_gateway.GetThumbnail(request_)
    assert error.value.code() == code


def test_search_options_list_the_filters_and_flag_a_random_weight_twin(pacs_gateway):
    with RetrievalClient(pacs_gateway.address) as client:
        options = client.search_options()
        assert len(client.search_text("effusion", top_k=3, group_by_study=True).hits) == 3
        assert client.thumbnail(_records()[1].image_id, size=32).width == 32
    assert options.model == MODEL and options.demo and options.index_size == IMAGES
    assert list(options.projections) == ["Frontal", "Lateral"] and "No Finding" in options.labels
