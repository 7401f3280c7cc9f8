"""A real Orthanc PACS with its DICOMweb plugin for the tests and benchmarks, and DICOM files made
from the NIH sample to fill it.

`Orthanc(folder)` starts the Debian `Orthanc` binary on a free loopback port with basic auth and a
temporary storage folder; `make setup-pacs` installs it. Orthanc 1.10 has no bind-address setting:
it listens on every interface, and `RemoteAccessAllowed: false` makes it refuse all but loopback.
`deletion_script` is deploy/orthanc/cxr-follow-deletions.lua as such an Orthanc loads it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from cxr.processes import free_ports, log_tail, stop_process

BINARY = "Orthanc"
LUA_SCRIPT = Path(__file__).parents[1] / "deploy" / "orthanc" / "cxr-follow-deletions.lua"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "indexer", "s3cret-pacs"


def missing() -> str:
    """Why no Orthanc can start here, or '' when one can."""
    if shutil.which(BINARY) is None:
        return "the Orthanc binary is not installed: run `make setup-pacs` (Debian: orthanc orthanc-dicomweb)"
    if not PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin {PLUGIN} is missing: run `make setup-pacs`"
    return ""


def deletion_script(folder: Path, url: str, token: str = "") -> Path:
    """A copy of the shipped Lua script in `folder`, posting to the follower's `url` with `token`, set
    where an operator sets them (its first lines); for Orthanc's "LuaScripts" setting."""
    text = LUA_SCRIPT.read_text()
    for name, value in (("FOLLOWER_URL", url), ("TOKEN", token)):
        text, found = re.subn(rf"^local {name} = '[^']*'", f"local {name} = '{value}'", text, flags=re.MULTILINE)
        if found != 1:
            raise ValueError(f"{LUA_SCRIPT} no longer sets {name} on a line of its own")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LUA_SCRIPT.name
    path.write_text(text)
    return path


class Orthanc:
    """A running Orthanc on loopback; `url` is its DICOMweb root, `rest_url` its REST API. `settings`
    are added to its configuration (e.g. {"LuaScripts": [path]})."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, timeout: float = 60.0,
                 settings: dict | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.users = users or {USER: PASSWORD}
        config = folder / "orthanc.json"
        config.write_text(json.dumps(self._config(folder) | (settings or {})))
        self.config, self.log_file = config, folder / "orthanc.log"
        self.rest_url = f"http://127.0.0.1:{self.port}"
        self.url = self.rest_url + "/dicom-web"
        self.start(timeout)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (again, after `stop`: same port, same storage, as a PACS back from a restart)."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen([BINARY, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(timeout)

    def _config(self, folder: Path) -> dict:
        return {
            "Name": "cxr-test-pacs", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "storage"), "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "AuthenticationEnabled": True, "RegisteredUsers": self.users,
            "HttpCompressionEnabled": False, "ConcurrentJobs": 1, "HttpThreadsCount": 8,
            "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        user, password = next(iter(self.users.items()))
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with status {self.process.returncode}:\n{log_tail(self.log_file)}")
            try:
                if requests.get(self.url + "/studies", auth=(user, password), timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s:\n{log_tail(self.log_file)}")

    def get(self, path: str) -> dict | list:
        """A REST call as the first registered user."""
        response = requests.get(self.rest_url + path, auth=next(iter(self.users.items())), timeout=30)
        response.raise_for_status()
        return response.json()

    def study_id(self, study_uid: str) -> str:
        """Orthanc's own id of a study (its REST API names studies by it), looked up by StudyInstanceUID."""
        response = requests.post(self.rest_url + "/tools/lookup", data=study_uid,
                                 auth=next(iter(self.users.items())), timeout=30)
        response.raise_for_status()
        return next(item["ID"] for item in response.json() if item["Type"] == "Study")

    def delete(self, path: str) -> None:
        """A REST DELETE (e.g. /studies/<id>, as an archivist removes a study) as the first registered user."""
        response = requests.delete(self.rest_url + path, auth=next(iter(self.users.items())), timeout=30)
        response.raise_for_status()

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> Orthanc:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Image8:
    """What a generated instance holds, beside its pixels (read from `png`)."""
    png: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str
    study_date: str
    modality: str = "DX"
    view_position: str = "PA"
    monochrome1: bool = False


def dataset(image: Image8):
    """An 8-bit DICOM (secondary capture, DX/CR modality) of the PNG's grey channel; MONOCHROME1 stores
    the inverted values, so a viewer (and cxr.images) shows the same picture."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    grey = np.asarray(Image.open(image.png).convert("L"), dtype=np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = image.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, image.sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = image.study_uid, image.series_uid
    ds.PatientID, ds.PatientName = image.patient_id, f"TEST^PATIENT{image.patient_id}"
    ds.AccessionNumber, ds.StudyDate, ds.StudyTime = image.accession, image.study_date, "120000"
    ds.Modality, ds.BodyPartExamined, ds.SeriesNumber, ds.InstanceNumber = image.modality, "CHEST", 1, 1
    if image.view_position:
        ds.ViewPosition = image.view_position
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if image.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = grey.shape
    ds.PixelData = (255 - grey if image.monochrome1 else grey).tobytes()
    return ds


def nih_images(data_dir: Path, count: int, first: int = 0, per_study: int = 3) -> list[Image8]:
    """`count` NIH sample images as DICOM instances: consecutive images of one patient share a study
    (up to `per_study`), views from labels.csv, every fourth MONOCHROME1, every third CR (else DX)."""
    from pydicom.uid import generate_uid

    with (data_dir / "nih800" / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))[first:first + count]
    images, study, in_study, previous = [], "", 0, None
    for i, row in enumerate(rows):
        if row["patient_id"] != previous or in_study == per_study:
            study, in_study, previous = generate_uid(), 0, row["patient_id"]
            date = (dt.date(2020, 1, 1) + dt.timedelta(days=first + i)).strftime("%Y%m%d")
        in_study += 1
        images.append(Image8(
            png=data_dir / "nih800" / row["path"], patient_id=row["patient_id"], study_uid=study,
            series_uid=generate_uid(), sop_uid=generate_uid(), accession=f"ACC{first + i:06d}",
            study_date=date, modality="CR" if i % 3 == 0 else "DX", view_position=row["view_position"],
            monochrome1=i % 4 == 1))
    return images


def write_files(images: list[Image8], folder: Path) -> list[Path]:
    """Each instance as a Part-10 file <sop>.dcm in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image in images:
        path = folder / f"{image.sop_uid}.dcm"
        dataset(image).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stow(url: str, paths: list[Path], user: str = USER, password: str = PASSWORD, batch: int = 16) -> None:
    """Upload Part-10 files with STOW-RS (dicomweb-client's store_instances), a few per request."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (user, password)
    client = DICOMwebClient(url, session=session)
    for start in range(0, len(paths), batch):
        client.store_instances([pydicom.dcmread(p) for p in paths[start:start + batch]])
