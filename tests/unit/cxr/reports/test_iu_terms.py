"""IU-Xray's MeSH annotations as the index's labels."""

import csv

import pytest

from cxr.archives import NO_FINDING
from cxr.reports import iu_terms, labeler
from support import DATA_DIR


@pytest.mark.parametrize("mesh, expected", [
    ("normal", (NO_FINDING,)),
    ("Pulmonary Atelectasis/base/left;Cardiomegaly/mild", ("Atelectasis", "Cardiomegaly")),
    ("Cardiomegaly/borderline;Pulmonary Artery/enlarged", ("Cardiomegaly",)),
    ("Pleural Effusion/bilateral/small", ("Effusion",)),
    ("Hernia, Hiatal/large", ("Hernia",)),
    ("Pulmonary Edema/interstitial;Pulmonary Congestion", ("Edema",)),
    ("Pulmonary Emphysema;Pulmonary Disease, Chronic Obstructive;Lung/hyperdistention", ("Emphysema",)),
    ("Infiltrate/lung/base/left;Opacity/lung/base/left", ("Infiltration",)),
    ("Thickening/pleura/apex/left/mild", ("Pleural_Thickening",)),
    ("Cardiac Shadow/enlarged/mild", ("Cardiomegaly",)),
    ("Hydropneumothorax/right", ("Effusion", "Pneumothorax")),
    ("Nodule/lung/lingula;Mass/lung/upper lobe/right", ("Mass", "Nodule")),
    ("Pulmonary Fibrosis/interstitial;Cicatrix/lung/apex", ("Fibrosis",)),
])
def test_terms_that_are_findings(mesh, expected):
    assert iu_terms.labels(mesh) == expected


@pytest.mark.parametrize("mesh", [
    "Calcified Granuloma/lung/upper lobe/right", "Granuloma;Granulomatous Disease", "Opacity/lung/base/left",
    "Airspace Disease/lung/base/bilateral", "Cicatrix/lung/base/left", "Costophrenic Angle/right/blunted",
    "Thickening/bronchovascular", "Cardiac Shadow/borderline", "Volume Loss/lung/right",
    "Pulmonary Disease, Chronic Obstructive;Lung/hyperdistention", "Scoliosis;Spondylosis",
])
def test_terms_that_are_none_of_the_14_are_no_finding(mesh):
    assert iu_terms.labels(mesh) == (NO_FINDING,)


def test_no_indexing_and_empty_are_not_annotated():
    assert not iu_terms.annotated("No Indexing")
    assert not iu_terms.annotated(" ; ")
    assert iu_terms.annotated("normal") and iu_terms.annotated("Cardiomegaly/mild")


def test_every_mapped_label_is_an_index_label():
    mapped = {label for labels in (*iu_terms.HEADINGS.values(), *iu_terms.QUALIFIED.values()) for label in labels}
    assert mapped <= set(labeler.LABELS)


def test_each_finding_is_reached_by_real_annotations():
    with (DATA_DIR / "iu" / "indiana_reports.csv").open(newline="", encoding="utf-8-sig") as f:
        found = {label for row in csv.DictReader(f) for label in iu_terms.labels(row["MeSH"])}
    assert found == set(labeler.LABELS)
