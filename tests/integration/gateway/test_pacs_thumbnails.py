"""Thumbnails of images indexed from a PACS come over WADO-RS from a real Orthanc, through a real
gateway and Triton; a PACS that goes away is UNAVAILABLE for thumbnails while search goes on."""

import io
from dataclasses import replace

import grpc
import pytest
from PIL import Image

from benchmarks import orthanc
from cxr import dicomweb
from cxr.catalog import ExportedModel
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc
from indexing.build import BuildOptions
from indexing.dicomweb_build import build_from_pacs
from support import DATA_DIR, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"


@pytest.fixture(scope="module")
def pacs_stack(served, tmp_path_factory):
    if reason := orthanc.missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("pacs-thumbnails")
    images = orthanc.nih_images(DATA_DIR, 6)
    server = orthanc.Orthanc(root / "orthanc")
    try:
        orthanc.stow(server.url, orthanc.write_files(images, root / "files"))
        settings = replace(served, model=MODEL, index_dir=root / "indexes", dicomweb_url=server.url,
                           dicomweb_user=orthanc.USER, dicomweb_password=orthanc.PASSWORD)
        model = ExportedModel.load(settings.model_repository, MODEL)
        with dicomweb.from_settings(settings) as pacs:
            build_from_pacs(pacs, dicomweb.Query(), model, settings, settings.index_path(MODEL),
                            BuildOptions(progress=False, workers=1))
        gateway = BackgroundGateway(settings)
        try:
            with grpc.insecure_channel(gateway.address) as channel:
                yield server, images, retrieval_pb2_grpc.RetrievalStub(channel)
        finally:
            gateway.stop()
    finally:
        server.stop()


def test_a_pacs_image_s_thumbnail_comes_over_wado_rs(pacs_stack):
    _, images, stub = pacs_stack
    thumbnail = stub.GetThumbnail(pb.GetThumbnailRequest(image_id=images[2].sop_uid, size=40))
    picture = Image.open(io.BytesIO(thumbnail.data))
    assert picture.format == "PNG" and max(picture.size) == 40 and picture.getextrema() != (0, 0)


def test_a_pacs_gone_makes_thumbnails_unavailable_and_search_goes_on(pacs_stack):
    server, images, stub = pacs_stack
    server.stop()
    with pytest.raises(grpc.RpcError) as error:
        stub.GetThumbnail(pb.GetThumbnailRequest(image_id=images[3].sop_uid, size=40))
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and "PACS" in error.value.details()
    assert orthanc.PASSWORD not in error.value.details()
    assert len(stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=3)).hits) == 3
