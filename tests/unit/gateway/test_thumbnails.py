"""Thumbnails: windowed through cxr.images, shrunk, cached within a byte budget, read from file or PACS."""

import io
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from cxr.errors import CxrError
from cxr.images import ImageLimits
from cxr.settings import Settings
from gateway import thumbnails
from support import DATA_DIR

SAMPLES = DATA_DIR / "cxr_samples"
DICOM = next(SAMPLES.glob("*.dcm"))


def test_a_dicom_becomes_a_png_no_larger_than_asked():
    data, width, height = thumbnails.render(DICOM.read_bytes(), 128, ImageLimits())
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (width, height) and max(width, height) == 128


def test_an_oblong_jpeg_keeps_its_aspect():
    data, width, height = thumbnails.render((SAMPLES / "16747_3_1.jpg").read_bytes(), 256, ImageLimits())
    assert width == 256 and height == round(885 * 256 / 1036)


@pytest.mark.parametrize("size, expected", [(0, thumbnails.DEFAULT_SIZE), (32, 32), (512, 512)])
def test_size_defaults_and_bounds(size, expected):
    assert thumbnails.size_of(size) == expected


@pytest.mark.parametrize("size", [-1, 31, 513, 10_000])
def test_a_size_out_of_bounds_is_refused(size):
    with pytest.raises(ValueError, match="between 32 and 512"):
        thumbnails.size_of(size)


def test_the_cache_drops_the_least_recently_used_past_its_budget():
    cache = thumbnails.ThumbnailCache(max_bytes=25)
    cache.put("a", (b"x" * 10, 1, 1))
    cache.put("b", (b"x" * 10, 1, 1))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", (b"x" * 10, 1, 1))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.bytes == 20
    cache.put("huge", (b"x" * 26, 1, 1))
    assert cache.get("huge") is None and cache.bytes == 20


def test_a_file_is_read_and_a_missing_one_is_named_without_its_folder(tmp_path):
    source = thumbnails.ImageSource(Settings())
    assert source.read({"image_id": "x", "path": str(DICOM)}) == DICOM.read_bytes()
    with pytest.raises(thumbnails.ThumbnailSourceError, match="not readable") as error:
        source.read({"image_id": "x", "path": str(tmp_path / "gone.png")})
    assert str(tmp_path) not in str(error.value)


def test_a_pacs_image_without_a_pacs_setting_says_which_setting():
    with pytest.raises(thumbnails.ThumbnailSourceError, match="dicomweb_url"):
        thumbnails.ImageSource(Settings()).read({"image_id": "x", "path": "", "sop_instance_uid": "1.2.3"})


class _Pacs:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.asked = []

    def instance_bytes(self, study, series, sop):
        self.asked.append((study, series, sop))
        if self.fail:
            raise CxrError("connection refused")
        return DICOM.read_bytes()


def test_a_pacs_image_is_fetched_by_its_uids_and_a_pacs_failure_is_unavailable():
    source = thumbnails.ImageSource(replace(Settings(), dicomweb_url="http://127.0.0.1:9/dicom-web"))
    row = {"image_id": "3", "path": "", "study_instance_uid": "1", "series_instance_uid": "2",
           "sop_instance_uid": "3"}
    source._pacs = _Pacs()
    assert source.read(row) == DICOM.read_bytes() and source._pacs.asked == [("1", "2", "3")]
    source._pacs = _Pacs(fail=True)
    with pytest.raises(thumbnails.PacsUnavailableError, match="connection refused"):
        source.read(row)


def test_thumbnails_render_once_then_come_from_the_cache():
    made = thumbnails.Thumbnails(Settings())
    row = {"image_id": "d", "path": str(Path(DICOM))}
    first = made.make("m", row, 64)
    assert made.cached("m", "d", 64) == first and made.cached("m", "d", 128) is None
