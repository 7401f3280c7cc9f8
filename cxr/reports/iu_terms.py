"""IU-Xray's manual annotations (the MeSH column of indiana_reports.csv) as the index's labels.

An annotation is `;`-separated terms, each a heading and `/`-separated qualifiers:
"Pulmonary Atelectasis/base/left;Cardiomegaly/mild", or "normal", or "No Indexing" (not annotated).
A term maps by its heading alone (HEADINGS), or, where a heading covers more than one thing, by its
heading and a qualifier (QUALIFIED: "Thickening/pleura" is Pleural_Thickening, "Thickening/
bronchovascular" is not). A heading in neither maps to nothing: most IU terms (Calcified Granuloma,
Opacity, Scoliosis, ...) are none of the 14 findings. A report none of whose terms maps is
"No Finding", as in ChestX-ray14, where the label means none of the 14.

The mapping follows the meaning cxr.reports.vocabulary gives each label (NIH ChestX-ray14's, as its
authors' phrase list spells it): Opacity, Airspace Disease and Density are not Infiltration; Granuloma
and Calcified Granuloma are not Nodule; COPD and Lung/hyperdistention are not Emphysema; Cicatrix
(scar) is not Fibrosis; Costophrenic Angle/blunted is not Effusion; Volume Loss is not Atelectasis;
Pulmonary Congestion and Heart Failure are Edema; an enlarged cardiac shadow is Cardiomegaly.
"""

from __future__ import annotations

from cxr.reports.vocabulary import NO_FINDING

NOT_ANNOTATED = "No Indexing"

# heading -> labels (a term with this heading maps to them, whatever its qualifiers)
HEADINGS: dict[str, tuple[str, ...]] = {
    "normal": (NO_FINDING,),
    "Pulmonary Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Pulmonary Edema": ("Edema",),
    "Pulmonary Congestion": ("Edema",),
    "Heart Failure": ("Edema",),
    "Pleural Effusion": ("Effusion",),
    "Emphysema": ("Emphysema",),
    "Pulmonary Emphysema": ("Emphysema",),
    "Bullous Emphysema": ("Emphysema",),
    "Pulmonary Fibrosis": ("Fibrosis",),
    "Fibrosis": ("Fibrosis",),
    "Hernia, Hiatal": ("Hernia",),
    "Hernia, Diaphragmatic": ("Hernia",),
    "Infiltrate": ("Infiltration",),
    "Mass": ("Mass",),
    "Nodule": ("Nodule",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Hydropneumothorax": ("Pneumothorax", "Effusion"),
    "Hemopneumothorax": ("Pneumothorax", "Effusion"),
}

# (heading, qualifier) -> labels, for headings that are one of the 14 only with that qualifier
QUALIFIED: dict[tuple[str, str], tuple[str, ...]] = {
    ("Thickening", "pleura"): ("Pleural_Thickening",),
    ("Cardiac Shadow", "enlarged"): ("Cardiomegaly",),
    ("Heart", "enlarged"): ("Cardiomegaly",),
}


def term_labels(term: str) -> tuple[str, ...]:
    """The labels one term maps to ("Thickening/pleura/apex/left" -> ("Pleural_Thickening",))."""
    heading, *qualifiers = [part.strip() for part in term.split("/")]
    found = list(HEADINGS.get(heading, ()))
    for qualifier in qualifiers:
        found += QUALIFIED.get((heading, qualifier), ())
    return tuple(dict.fromkeys(found))


def annotated(mesh: str) -> bool:
    """Whether the annotators indexed this report (empty and "No Indexing" are not)."""
    terms = [term.strip() for term in mesh.split(";") if term.strip()]
    return bool(terms) and NOT_ANNOTATED not in terms


def labels(mesh: str) -> tuple[str, ...]:
    """The index labels of a report's MeSH annotation, findings in sorted order, or ("No Finding",)."""
    found = {label for term in mesh.split(";") if term.strip() for label in term_labels(term)}
    found.discard(NO_FINDING)
    return tuple(sorted(found)) or (NO_FINDING,)
