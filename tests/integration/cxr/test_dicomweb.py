"""cxr.dicomweb against a real Orthanc with its DICOMweb plugin: QIDO listing and its filters,
WADO-RS bytes that decode to the same pixels as the file, records from headers, Orthanc's change
feed, and errors that name the remedy."""

import numpy as np
import pydicom
import pytest

from benchmarks import orthanc
from cxr import dicomweb
from cxr.images import preprocess
from support import DATA_DIR, SAMPLE_DICOM


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """An Orthanc holding 12 NIH images (4 studies of 3) and the real SIIM DICOM; yields (server, images)."""
    if reason := orthanc.missing():
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("orthanc")
    images = orthanc.nih_images(DATA_DIR, 12, per_study=3)
    files = orthanc.write_files(images, root / "files")
    with orthanc.Orthanc(root / "server") as server:
        orthanc.stow(server.url, files + [SAMPLE_DICOM])
        yield server, images, files


@pytest.fixture
def client(pacs):
    server, _, _ = pacs
    with dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD) as client:
        yield client


def test_listing_finds_every_instance_and_the_filters_narrow_it(pacs, client):
    _, images, _ = pacs
    everything = client.instances()
    assert len(everything) == 13 and len({i.sop_uid for i in everything}) == 13
    cr = {i.sop_uid for i in client.instances(dicomweb.Query.parse("CR"))}
    assert cr == {im.sop_uid for im in images if im.modality == "CR"} | {pydicom.dcmread(SAMPLE_DICOM).SOPInstanceUID}
    assert len(client.instances(dicomweb.Query.parse("dx, cr"))) == 13
    late = sorted(im.study_date for im in images)[6]
    since = {i.sop_uid for i in client.instances(dicomweb.Query.parse(since=late))}
    assert since == {im.sop_uid for im in images if im.study_date >= late}
    assert len(client.instances(dicomweb.Query.parse(limit=5))) == 5


def test_wado_bytes_decode_to_the_pixels_of_the_file(pacs, client):
    """MONOCHROME1, MONOCHROME2 and the real JPEG-compressed sample: same pixels as read from disk."""
    _, images, files = pacs
    chosen = [(im.study_uid, im.series_uid, im.sop_uid, path) for im, path in zip(images[:3], files[:3])]
    assert any(im.monochrome1 for im in images[:3]) and not all(im.monochrome1 for im in images[:3])
    header = pydicom.dcmread(SAMPLE_DICOM, stop_before_pixels=True)
    chosen.append((header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID, SAMPLE_DICOM))
    for study, series, sop, path in chosen:
        data = client.instance_bytes(study, series, sop)
        assert data[128:132] == b"DICM"
        np.testing.assert_array_equal(preprocess(data, 64), preprocess(path.read_bytes(), 64))
    fetched = pydicom.dcmread(__import__("io").BytesIO(data))
    assert fetched.file_meta.TransferSyntaxUID == header.file_meta.TransferSyntaxUID  # JPEG kept, not transcoded


def test_monochrome1_is_shown_as_monochrome2(pacs, client):
    _, images, files = pacs
    inverted = next(im for im in images if im.monochrome1)
    data = client.instance_bytes(inverted.study_uid, inverted.series_uid, inverted.sop_uid)
    assert pydicom.dcmread(__import__("io").BytesIO(data)).PhotometricInterpretation == "MONOCHROME1"
    png = preprocess(inverted.png.read_bytes(), 64).astype(float).ravel()
    shown = preprocess(data, 64).astype(float).ravel()  # the DICOM path stretches to the image's own range
    assert np.corrcoef(png, shown)[0, 1] > 0.99  # bone bright, as in the PNG it was made from (inverted: -1)


def test_a_record_carries_the_dicom_identities_and_no_report(pacs, client):
    _, images, _ = pacs
    image = images[0]
    row = dicomweb.record(client.dataset(dicomweb.Instance(image.study_uid, image.series_uid, image.sop_uid)))
    assert (row.image_id, row.sop_instance_uid, row.study_uid, row.study_instance_uid, row.series_instance_uid) == \
        (image.sop_uid, image.sop_uid, image.study_uid, image.study_uid, image.series_uid)
    assert (row.accession_number, row.study_date, row.patient_id) == (image.accession, image.study_date,
                                                                       image.patient_id)
    assert row.patient_name == f"TEST^PATIENT{image.patient_id}" and row.filename == f"{image.sop_uid}.dcm"
    assert row.metadata()["path"] == "" and row.labels == () and row.report == ""
    assert row.projection == "Frontal" and row.view_position == image.view_position


def test_a_wrong_password_names_the_setting_to_change(pacs):
    server, _, _ = pacs
    with dicomweb.connect(server.url, orthanc.USER, "wrong") as client:
        with pytest.raises(dicomweb.PacsAuthError, match=r"HTTP 401.*CXR_DICOMWEB_PASSWORD") as error:
            client.check()
    assert "wrong" not in str(error.value)
    with dicomweb.connect(server.url, token="not-a-token") as client, pytest.raises(dicomweb.PacsAuthError):
        client.instances()


def test_unreachable_tls_and_credential_mistakes_are_explained(pacs, tmp_path):
    server, _, _ = pacs
    from cxr.processes import free_ports

    closed = f"http://{orthanc.USER}:{orthanc.PASSWORD}@127.0.0.1:{free_ports(1)[0]}/dicom-web"
    with dicomweb.connect(closed) as client, pytest.raises(dicomweb.PacsUnreachableError, match="could not reach") as e:
        client.check()
    assert orthanc.PASSWORD not in str(e.value)  # the URL is shown without its credentials
    https = server.url.replace("http://", "https://")
    with dicomweb.connect(https, orthanc.USER, orthanc.PASSWORD) as client:
        with pytest.raises(dicomweb.PacsTlsError, match="--dicomweb-ca"):
            client.check()
    with pytest.raises(dicomweb.PacsTlsError, match="no such file"):
        dicomweb.connect(https, ca=tmp_path / "missing.pem")
    with pytest.raises(dicomweb.DicomWebError, match="not both"):
        dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD, token="t")
    with pytest.raises(dicomweb.DicomWebError, match="--dicomweb"):
        dicomweb.connect("")


def test_from_settings_uses_the_dicomweb_settings(pacs, tmp_path):
    from cxr.settings import Settings

    server, images, _ = pacs
    settings = Settings(dicomweb_url=server.url, dicomweb_user=orthanc.USER, dicomweb_password=orthanc.PASSWORD)
    with dicomweb.from_settings(settings) as client:
        image = images[1]
        assert client.instance_bytes(image.study_uid, image.series_uid, image.sop_uid)[128:132] == b"DICM"


def test_orthanc_change_feed_reports_new_instances_from_a_sequence_number(tmp_path):
    if reason := orthanc.missing():
        pytest.skip(reason)
    images = orthanc.nih_images(DATA_DIR, 4, first=100)
    files = orthanc.write_files(images, tmp_path / "files")
    with orthanc.Orthanc(tmp_path / "server") as server, dicomweb.connect(server.url, orthanc.USER,
                                                                          orthanc.PASSWORD) as client:
        feed = dicomweb.OrthancChanges(dicomweb.OrthancChanges.root_of(server.url), client.session)
        assert feed.is_orthanc() and feed.last() == 0
        orthanc.stow(server.url, files[:3])
        changes, seq = feed.new_instances(0, limit=2)
        assert [c.instance.sop_uid for c in changes] == [im.sop_uid for im in images[:2]]
        rest, last = feed.new_instances(seq, limit=10)
        assert [c.instance.sop_uid for c in rest] == [images[2].sop_uid] and last == feed.last()
        assert rest[0].modality == images[2].modality and rest[0].study_date == images[2].study_date
        assert feed.new_instances(last, limit=10) == ([], last)
        assert not dicomweb.OrthancChanges(server.url + "/dicom-web", client.session).is_orthanc()


def test_report_instances_are_the_sr_series_of_the_studies_whatever_the_modality_filter(tmp_path):
    from support import sr

    if reason := orthanc.missing():
        pytest.skip(reason)
    images = orthanc.nih_images(DATA_DIR, 4, first=200, per_study=2)
    first, second = images[0], images[2]
    assert first.study_uid != second.study_uid
    report = sr.text_report(sr.BASIC_TEXT, first.study_uid, first.patient_id, "Clear lungs.", "Normal.")
    dose = sr.dose_report(second.study_uid, second.patient_id)
    files = orthanc.write_files(images, tmp_path / "files") + [sr.write(d, tmp_path / "sr") for d in (report, dose)]
    with orthanc.Orthanc(tmp_path / "server") as server, dicomweb.connect(server.url, orthanc.USER,
                                                                          orthanc.PASSWORD) as client:
        orthanc.stow(server.url, files)
        images_only = client.instances(dicomweb.Query.parse("CR,DX"))
        assert {i.sop_uid for i in images_only} == {im.sop_uid for im in images}
        found = client.report_instances(dict.fromkeys(i.study_uid for i in images_only))
        assert {(i.study_uid, i.series_uid, i.sop_uid) for i in found} == {
            (d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID) for d in (report, dose)}
        assert client.dataset(found[0]).Modality == "SR"
        assert client.report_instances([pydicom.uid.generate_uid()]) == []
