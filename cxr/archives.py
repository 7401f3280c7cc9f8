"""Archive readers: each turns an archive's CSVs into one `Record` per image.

- IU-Xray / Open-i (Kaggle layout): indiana_reports.csv + indiana_projections.csv + images/
- NIH ChestX-ray14 style: a label CSV (Image Index, Finding Labels, View Position) + image folder
- a generic manifest, CSV or JSONL: image path, optional text, labels, study and projection
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cxr.errors import FailedPreconditionError, NotFoundError

NO_FINDING = "No Finding"
VIEW_TO_PROJECTION = {"PA": "Frontal", "AP": "Frontal", "LL": "Lateral", "RL": "Lateral", "LATERAL": "Lateral"}


class ArchiveError(FailedPreconditionError, ValueError):
    """An archive's CSVs lack the columns or rows a reader needs."""


class ArchiveFileMissingError(NotFoundError, ValueError):
    """An archive's CSV or manifest is not where it was named."""


@dataclass(frozen=True)
class Record:
    image_id: str  # unique within the archive
    path: Path
    study_uid: str
    filename: str
    projection: str = ""
    labels: tuple[str, ...] = ()
    findings: str = ""
    impression: str = ""
    indication: str = ""
    patient_id: str = ""  # what training splits by; the study where an archive has no patient ids
    # DICOM identities, for archives read from a PACS (cxr.dicom_records); empty for file archives.
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    accession_number: str = ""
    study_date: str = ""  # DA: YYYYMMDD
    view_position: str = ""
    patient_name: str = ""  # patient data: stored for GetStudy (`studies` scope), never in a hit or a log

    @property
    def report(self) -> str:
        """Findings and impression as one text; empty for label-only archives."""
        return " ".join(part.strip() for part in (self.findings, self.impression) if part.strip())

    def metadata(self) -> dict:
        """What the index stores beside the vector (the path as text)."""
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


def _read_csv(path: Path, required: set[str]) -> list[dict]:
    with _text(path) as f:
        reader = csv.DictReader(f)
        missing = required - set(reader.fieldnames or ())
        if missing:
            raise ArchiveError(f"{path} lacks the columns {sorted(missing)} (it has {reader.fieldnames})")
        return list(reader)


@contextmanager
def _text(path: Path):
    """The archive file open as UTF-8 text; a missing file, or one that is not text, named."""
    if not path.is_file():
        raise ArchiveFileMissingError(f"{path} not found: check the path")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): give the archive's CSV "
                           "or JSONL, saved as UTF-8") from exc


def _split_labels(text: str, separators: str = "|;") -> tuple[str, ...]:
    for sep in separators:
        text = text.replace(sep, "|")
    return tuple(dict.fromkeys(label.strip() for label in text.split("|") if label.strip()))


def iu_xray(reports_csv: Path, projections_csv: Path, images_dir: Path) -> list[Record]:
    """One record per projection row, joined to its study's report by uid."""
    reports = {r["uid"]: r for r in _read_csv(reports_csv, {"uid", "findings", "impression"})}
    records = []
    for row in _read_csv(projections_csv, {"uid", "filename", "projection"}):
        report = reports.get(row["uid"], {})
        labels = _split_labels(report.get("Problems", ""), ";")
        records.append(Record(
            image_id=row["filename"], path=images_dir / row["filename"], study_uid=row["uid"],
            filename=row["filename"], projection=row["projection"],
            labels=tuple(NO_FINDING if label.lower() == "normal" else label for label in labels),
            findings=report.get("findings", ""), impression=report.get("impression", ""),
            indication=report.get("indication", ""), patient_id=row["uid"]))
    return records


def nih_labels(labels_csv: Path, images_dir: Path) -> list[Record]:
    """NIH ChestX-ray14 style: `Image Index`/`image_index`, `Finding Labels`/`finding_labels`."""
    rows = _read_csv(labels_csv, set())
    if not rows:
        raise ArchiveError(f"{labels_csv} has no rows")
    column = _columns(rows[0], labels_csv, image=("image_index", "Image Index"),
                      labels=("finding_labels", "Finding Labels"), view=("view_position", "View Position"),
                      path=("path",), patient=("patient_id", "Patient ID"))
    records = []
    for row in rows:
        image_index = row[column["image"]]
        relative = row[column["path"]] if column["path"] else image_index
        records.append(Record(
            image_id=image_index, path=images_dir / relative, study_uid=Path(image_index).stem,
            filename=Path(relative).name,
            projection=VIEW_TO_PROJECTION.get(row.get(column["view"] or "", "").upper(), ""),
            labels=_split_labels(row[column["labels"]]),
            patient_id=row[column["patient"]] if column["patient"] else Path(image_index).stem))
    return records


def _columns(row: dict, source: Path, **choices: tuple[str, ...]) -> dict[str, str | None]:
    found = {key: next((name for name in names if name in row), None) for key, names in choices.items()}
    for key in ("image", "labels"):
        if found[key] is None:
            raise ArchiveError(f"{source} has none of the columns {choices[key]} (it has {sorted(row)})")
    return found


def manifest(path: Path, images_dir: Path | None = None) -> list[Record]:
    """CSV or JSONL with `image` (path, relative to images_dir or the manifest), optional `text`,
    `labels` (list, or `|`/`;`-separated), `study_uid`, `projection`, `image_id`, `patient_id`."""
    rows = _read_jsonl(path) if path.suffix in (".jsonl", ".ndjson") else _read_csv(path, {"image"})
    root = images_dir or path.parent
    records = []
    for line, row in enumerate(rows, 1):
        if not row.get("image"):
            raise ArchiveError(f"{path}: row {line} has no `image`")
        labels = row.get("labels") or ""
        labels = tuple(labels) if isinstance(labels, list) else _split_labels(labels)
        image = Path(row["image"])
        records.append(Record(
            image_id=str(row.get("image_id") or row["image"]), path=image if image.is_absolute() else root / image,
            study_uid=str(row.get("study_uid") or image.stem), filename=image.name,
            projection=row.get("projection") or "", labels=labels, findings=row.get("text") or "",
            patient_id=str(row.get("patient_id") or row.get("study_uid") or image.stem)))
    return records


def _read_jsonl(path: Path) -> list[dict]:
    with _text(path) as f:
        lines = f.read().splitlines()
    rows = []
    for line, text in enumerate(lines, 1):
        if text.strip():
            try:
                rows.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ArchiveError(f"{path}: line {line} is not JSON: {exc}") from exc
    return rows
