"""Every transfer syntax of benchmarks.dicom_variants stored in a real Orthanc, fetched back over WADO-RS in
the syntax it was stored in, and indexed by the DICOMweb build through the real Triton (issue 19): no
instance is skipped for its syntax, each has the vector of its native file (lossy ones nearly), and
what holds no chest image to compare is skipped with its reason in skipped.csv."""

import csv

import numpy as np
import pydicom
import pytest

from benchmarks import orthanc
from benchmarks.dicom_variants import MATRIX, REFUSED, VARIANTS, not_comparable
from cxr import dicomweb
from cxr.catalog import ExportedModel
from cxr.store import faiss_files, faiss_store
from indexing.build import NOT_COMPARABLE, BuildOptions
from indexing.dicomweb_build import build_from_pacs
from support import cosine

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"
OPTIONS = BuildOptions(progress=False, batch_size=8, workers=1)
LOSSLESS_COSINE = 0.99999  # the same pixels: the same vector, to float error of batching
LOSSY_COSINE = 0.99
CASES = [(native, variant) for native, variants in MATRIX.items() for variant in variants]


def _sop(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, dicom_variants):
    """An Orthanc holding every variant, every native and the objects that are no chest image to compare;
    yields (server, {SOP Instance UID: what is no chest image to compare})."""
    if reason := orthanc.missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("orthanc-syntaxes")
    others = {}
    for name, dataset in not_comparable().items():
        path = root / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        others[_sop(path)] = path
    with orthanc.Orthanc(root / "server") as server:
        orthanc.stow(server.url, list(dicom_variants.values()) + list(others.values()))
        yield server, {sop: path.stem for sop, path in others.items()}


@pytest.fixture(scope="module")
def client(pacs):
    server, _ = pacs
    with dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD) as client:
        yield client


def test_wado_rs_sends_each_instance_in_the_syntax_it_was_stored_in(client, dicom_variants):
    by_sop = {i.sop_uid: i for i in client.instances()}
    for (native, variant), path in dicom_variants.items():
        fetched = client.dataset(by_sop[_sop(path)])
        stored = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert fetched.file_meta.TransferSyntaxUID == stored, (native, variant)


def test_a_pacs_build_gives_every_syntax_its_native_vector_and_skips_what_is_no_chest_image(
        served, pacs, client, dicom_variants, tmp_path):
    _, others = pacs
    model = ExportedModel.load(served.model_repository, MODEL)
    written = build_from_pacs(client, dicomweb.Query(), model, served, tmp_path / "index", OPTIONS)
    with (tmp_path / "index" / faiss_files.SKIPPED_FILE).open(newline="") as f:
        skipped = {row[0].rsplit("/", 1)[-1]: row[1] for row in list(csv.reader(f))[1:]}
    refused = {_sop(dicom_variants[case]) for case in REFUSED}
    assert set(skipped) == refused | set(others)  # nothing else skipped: no syntax without its decoder
    assert all("JPEG Extended with 12-bit samples" in skipped[sop] for sop in refused)
    for sop, name in others.items():
        assert skipped[sop].startswith(f"{NOT_COMPARABLE}: "), (name, skipped[sop])
    assert written["skipped"] == len(skipped)
    store = faiss_store.load(tmp_path / "index")
    vectors = {row["sop_instance_uid"]: vector
               for row, vector in zip(store.rows(range(store.count)), store.index.reconstruct_n(0, store.count))}
    for native, variant in (case for case in CASES if case not in REFUSED):
        got, expected = vectors[_sop(dicom_variants[native, variant])], vectors[_sop(dicom_variants[native, "native"])]
        floor = LOSSLESS_COSINE if VARIANTS[variant].tolerance is None else LOSSY_COSINE
        assert cosine(got[None], expected[None])[0] >= floor, (native, variant)
    np.testing.assert_array_equal(  # a lossless variant is the very same vector, not merely a close one
        vectors[_sop(dicom_variants["grey12", "jpeg-lossless-sv1"])], vectors[_sop(dicom_variants["grey12", "native"])])
