"""deploy/orthanc/cxr-follow-deletions.lua in a real Orthanc 1.10 (Debian's), posting to the follower's
listener (indexing.pacs_notices): a DELETE of an instance, a study or a patient brings a notice for every
instance it removed, and for each series, study and patient gone, within a second of Orthanc's answer;
an instance stored again in place (OverwriteInstances) brings one too, though Orthanc holds it (so the
follower asks Orthanc before deleting); a notice the listener refuses (a wrong token) is logged by
Orthanc; callbacks of a script loaded before it are still called. (The follower committing them to the
FAISS index: tests/integration/indexing/test_dicomweb_build.py.)"""

import time

import pytest

from benchmarks import orthanc
from cxr.dicomweb import orthanc_id
from indexing.pacs_notices import DeletionListener, Notice
from support import DATA_DIR

TOKEN = "s3cret-notices"


@pytest.fixture(scope="module")
def images():
    """12 NIH images: patient 1's study of 3, then patient 3's studies of 3, 3 and 2, then patient 4's."""
    if reason := orthanc.missing():
        pytest.skip(reason)
    return orthanc.nih_images(DATA_DIR, 12, first=300, per_study=3)


def _ids(image):
    """The Orthanc ids of an image's patient, study, series and instance."""
    uids = (image.patient_id, image.study_uid, image.series_uid, image.sop_uid)
    return [orthanc_id(*uids[:level]) for level in range(1, 5)]


def _notices(listener, expected, timeout=5.0):
    """What the listener took until it held `expected` (or timeout) and 0.3 s more, and the seconds
    until it held `expected`."""
    taken, started = [], time.monotonic()
    while not expected <= set(taken) and time.monotonic() - started < timeout:
        taken += listener.take(0.01)
    seconds = time.monotonic() - started
    while more := listener.take(0.3):
        taken += more
    return taken, seconds


def test_orthanc_posts_a_notice_for_every_resource_a_deletion_removes_within_a_second(images, tmp_path):
    with DeletionListener(token=TOKEN) as listener:
        script = orthanc.deletion_script(tmp_path / "lua", listener.url, TOKEN)
        earlier = tmp_path / "earlier.lua"  # a site's own callback, loaded before: still called
        earlier.write_text("function OnDeletedStudy(id) print('the earlier script saw study ' .. id) end\n")
        settings = {"LuaScripts": [str(earlier), str(script)], "OverwriteInstances": True}
        with orthanc.Orthanc(tmp_path / "orthanc", settings=settings) as server:
            paths = orthanc.write_files(images, tmp_path / "files")
            orthanc.stow(server.url, paths)
            assert listener.take(0.5) == []  # stores bring none
            # An instance of a study of three (its own series goes with it: one instance a series), a study
            # of three whose patient has two more, and that patient with them.
            instance, study, patient = images[1], images[3:6], images[6:11]
            assert len({im.study_uid for im in images[:3]}) == 1 and len({im.study_uid for im in study}) == 1
            assert {im.patient_id for im in study + patient} == {"3"} and len({im.study_uid for im in patient}) == 2

            def gone(removed, levels):
                return {Notice(kind, _ids(im)[level]) for im in removed for kind, level in levels}

            to_series = (("Instance", 3), ("Series", 2))
            to_study = to_series + (("Study", 1),)
            cases = [(f"/instances/{_ids(instance)[3]}", gone([instance], to_series)),
                     (f"/studies/{_ids(study[0])[1]}", gone(study, to_study)),
                     (f"/patients/{_ids(patient[0])[0]}", gone(patient, to_study + (("Patient", 0),)))]
            for path, expected in cases:
                server.delete(path)
                taken, seconds = _notices(listener, expected)
                assert set(taken) == expected and len(taken) == len(expected), path  # each once
                assert seconds < 1.0, f"{path}: the notices took {seconds:.2f} s"
            assert f"the earlier script saw study {_ids(study[0])[1]}" in server.log_file.read_text()
            # Stored again in place: Orthanc deletes the old copy (a notice) and holds the new one.
            kept = images[0]
            orthanc.stow(server.url, [paths[images.index(kept)]])
            taken, _ = _notices(listener, {Notice("Instance", _ids(kept)[3])})
            assert Notice("Instance", _ids(kept)[3]) in taken
            assert server.get(f"/instances/{_ids(kept)[3]}")["ID"] == _ids(kept)[3]


def test_a_notice_the_listener_refuses_is_logged_by_orthanc(images, tmp_path):
    with DeletionListener(token=TOKEN) as listener:
        script = orthanc.deletion_script(tmp_path / "lua", listener.url, "not-the-token")
        with orthanc.Orthanc(tmp_path / "orthanc", settings={"LuaScripts": [str(script)]}) as server:
            orthanc.stow(server.url, orthanc.write_files(images[:1], tmp_path / "files"))
            server.delete(f"/instances/{_ids(images[0])[3]}")
            deadline = time.monotonic() + 5
            while "did not take the deletion of Instance" not in server.log_file.read_text():
                assert time.monotonic() < deadline, "Orthanc logged no refused notice"
                time.sleep(0.05)
            assert listener.take(0) == [] and "will find it by reconciling" in server.log_file.read_text()
