"""cxr.dicomweb against a real Orthanc with its DICOMweb plugin: QIDO listing and its filters (study by
study, and whole-archive pages), WADO-RS bytes that decode to the same pixels as the file, records from
headers, Orthanc's change feed (which has no deletions: its count, ids and look-up tell of them), the
ids Orthanc gives resources, and errors that name the remedy."""

import numpy as np
import pydicom
import pytest
import requests

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


def _orthanc_with(tmp_path, images):
    files = orthanc.write_files(images, tmp_path / "files")
    server = orthanc.Orthanc(tmp_path / "server")
    orthanc.stow(server.url, files)
    return server, files


def _instance_id(image):
    return dicomweb.orthanc_id(image.patient_id, image.study_uid, image.series_uid, image.sop_uid)


def _delete(server, path):
    response = requests.delete(server.rest_url + path, auth=(orthanc.USER, orthanc.PASSWORD), timeout=30)
    response.raise_for_status()


def test_orthanc_ids_are_the_sha1_of_the_dicom_identifiers(tmp_path):
    if reason := orthanc.missing():
        pytest.skip(reason)
    images = orthanc.nih_images(DATA_DIR, 6, first=120, per_study=3)
    server, _ = _orthanc_with(tmp_path, images)
    with server, dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD) as client:
        feed = dicomweb.OrthancChanges(server.rest_url, client.session)
        assert set(feed.instance_ids(0, 100)) == {_instance_id(im) for im in images}
        for im in images:
            instance = server.get(f"/instances/{_instance_id(im)}")
            series = server.get(f"/series/{instance['ParentSeries']}")
            study = server.get(f"/studies/{series['ParentStudy']}")
            assert instance["ParentSeries"] == dicomweb.orthanc_id(im.patient_id, im.study_uid, im.series_uid)
            assert series["ParentStudy"] == dicomweb.orthanc_id(im.patient_id, im.study_uid)
            assert study["ParentPatient"] == dicomweb.orthanc_id(im.patient_id)
        assert feed.instance_ids(4, 100) == feed.instance_ids(0, 100)[4:] and feed.instance_ids(6, 100) == []


def test_orthanc_deletions_leave_no_change_in_the_feed_only_a_lower_count(tmp_path):
    """What a follower can know of deletions on Orthanc 1.10: DELETE of an instance, a series, a study or
    a patient adds no change to /changes (and takes out the deleted resources' own changes); the count of
    instances falls; the look-up by SOP UID no longer finds them. Stored again, an instance is new."""
    if reason := orthanc.missing():
        pytest.skip(reason)
    images = orthanc.nih_images(DATA_DIR, 12, first=300, per_study=3)
    # An instance and a series of one study (images 0, 1), another patient's study (6) and that patient (9).
    first, second, third, fourth = images[0], images[1], images[6], images[9]
    assert first.study_uid == second.study_uid != third.study_uid != fourth.study_uid
    assert third.patient_id == fourth.patient_id != first.patient_id
    server, files = _orthanc_with(tmp_path, images)
    with server, dicomweb.connect(server.url, orthanc.USER, orthanc.PASSWORD) as client:
        feed = dicomweb.OrthancChanges(server.rest_url, client.session)
        last, count = feed.last(), feed.count()
        assert count == 12 and feed.has_instance(images[0].sop_uid)
        _delete(server, f"/instances/{_instance_id(first)}")
        _delete(server, f"/series/{dicomweb.orthanc_id(second.patient_id, second.study_uid, second.series_uid)}")
        _delete(server, f"/studies/{dicomweb.orthanc_id(third.patient_id, third.study_uid)}")
        _delete(server, f"/patients/{dicomweb.orthanc_id(fourth.patient_id)}")
        deleted = {first.sop_uid, second.sop_uid} | {im.sop_uid for im in images if im.patient_id == fourth.patient_id}
        assert feed.new_instances(last, limit=100) == ([], last) and feed.last() <= last
        assert feed.count() == 12 - len(deleted)
        remaining, _ = feed.new_instances(0, limit=100)
        assert {c.instance.sop_uid for c in remaining} == {im.sop_uid for im in images} - deleted
        assert not any(feed.has_instance(sop) for sop in deleted)
        orthanc.stow(server.url, files[:1])
        again, seq = feed.new_instances(last, limit=100)
        assert [c.instance.sop_uid for c in again] == [first.sop_uid] and seq > last


def test_a_whole_archive_listing_by_pages_finds_what_study_by_study_listing_finds(pacs, client):
    _, images, _ = pacs
    query = dicomweb.Query.parse("CR", since=sorted(im.study_date for im in images)[4])
    pages = list(client.instance_pages(query, page=2))
    assert max(len(p) for p in pages) == 2
    assert sorted((i for p in pages for i in p), key=str) == sorted(client.instances(query), key=str)
    everything = [i for p in client.instance_pages(page=5) for i in p]
    assert len(everything) == 13 and all(client.has_instance(i) for i in everything[:3])
    assert not client.has_instance(dicomweb.Instance(images[0].study_uid, images[0].series_uid, "1.2.3.4"))
