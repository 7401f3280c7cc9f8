import numpy as np
import pytest

from cxr import archives
from cxr.archives import Record
from support import DATA_DIR
from training import data


def _nih_examples():
    return data.examples_from(archives.nih_labels(DATA_DIR / "nih800" / "labels.csv", DATA_DIR / "nih800"))


def test_captions_name_every_label_and_normal_images_get_normal_text():
    rng = np.random.default_rng(0)
    for _ in range(20):
        text = data.caption(("Effusion", "Pleural_Thickening"), rng)
        assert "effusion" in text and "pleural thickening" in text and "_" not in text
    normal = {data.caption(("No Finding",), rng) for _ in range(40)}
    assert all(any(phrase in text for phrase in data.NORMAL_PHRASES) for text in normal)
    assert any(text.startswith("chest") for text in normal)  # templates are shared with abnormal captions
    assert data.label_prompt("Pleural_Thickening") == "chest x-ray showing pleural thickening"


def test_report_archives_pair_the_report_and_key_by_study():
    record = Record("a.png", DATA_DIR / "a.png", "s1", "a.png", findings="Heart normal.", impression="No effusion.")
    example = data.Example.from_record(record)
    assert example.text(np.random.default_rng(0)) == "Heart normal. No effusion."
    assert example.keys == {"study:s1"}
    labelled = data.Example.from_record(Record("b.png", DATA_DIR / "b.png", "s2", "b.png", labels=("Mass", "Edema")))
    assert labelled.keys == {"Mass", "Edema"} and labelled.report == ""


def test_split_is_by_patient_sized_and_seeded():
    examples = _nih_examples()
    train, valid = data.split_by_patient(examples, 0.25, seed=0)
    assert len(train) + len(valid) == len(examples) == 800
    assert 190 <= len(valid) <= 230
    assert not {e.record.patient_id for e in train} & {e.record.patient_id for e in valid}
    again = data.split_by_patient(examples, 0.25, seed=0)[1]
    assert [e.record.image_id for e in again] == [e.record.image_id for e in valid]
    other = data.split_by_patient(examples, 0.25, seed=1)[1]
    assert [e.record.image_id for e in other] != [e.record.image_id for e in valid]


def test_records_without_text_or_labels_cannot_be_trained_on():
    record = Record("a.png", DATA_DIR / "a.png", "s1", "a.png")
    with pytest.raises(data.TrainingDataError, match="no record has a report or finding labels"):
        data.examples_from([record])


def test_load_images_matches_the_gateway_preprocessing_and_drops_unreadable(tmp_path):
    from cxr.images import preprocess

    examples = _nih_examples()[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = data.Example(Record("b", broken, "b", "b.png", labels=("Mass",)), "", frozenset({"Mass"}))
    pixels, kept = data.load_images(examples + [bad], 64, "test")
    assert pixels.shape == (3, 3, 64, 64) and pixels.dtype.is_floating_point is False
    assert kept == examples
    expected = preprocess(examples[0].record.path.read_bytes(), 64)
    assert np.array_equal(pixels[0].permute(1, 2, 0).numpy(), expected)
