"""A DICOMweb PACS as an archive: QIDO-RS to list chest X-ray instances, WADO-RS to fetch one as
its Part-10 bytes, and the instance's header as a `cxr.archives.Record`.

The bytes are decoded by `cxr.images.preprocess`, as every other image (MONOCHROME1, modality and
VOI LUTs are handled there), so an image indexed from the PACS is prepared exactly as the same file
read from disk or sent to the gateway. Orthanc's change feed (`OrthancChanges`) tells a follower
which instances arrived since it last looked. It never tells of deletions (Orthanc 1.10 signals them
to its plugins only, and drops a deleted resource's own entries from the feed): a follower finds
those by listing what the PACS holds (Orthanc's REST listing of instance ids, else QIDO-RS) and
comparing with what it indexed.

Nothing here logs or puts in an error message a patient's name, id or any UID: errors name the
server, the HTTP status and the setting to change.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cxr.archives import VIEW_TO_PROJECTION, Record
from cxr.errors import CxrError, FailedPreconditionError, InternalError, NotFoundError, UnavailableError

TIMEOUT_S = (10.0, 120.0)  # connect, read: a large DICOM over a slow link takes a while
PAGE = 100  # QIDO results asked for at once (under the caps PACSs put on one answer)
LISTING_PAGE = 1000  # instances per page of a whole-archive listing (a PACS capping lower is paged on)
SR_MODALITY = "SR"  # the series modality of structured reports (radiology reports among them)
POOL_SIZE = 16  # HTTP connections kept per host: the builder fetches several instances at once
CREDENTIALS_HINT = ("set --dicomweb-user and CXR_DICOMWEB_PASSWORD (basic auth) or CXR_DICOMWEB_TOKEN (bearer "
                    "token), or dicomweb_user / dicomweb_password / dicomweb_token in cxr.toml")


class DicomWebError(CxrError):
    """The PACS could not be used; the message says what to change."""


class PacsUnreachableError(DicomWebError, UnavailableError):
    """No HTTP answer from the PACS."""


class PacsAuthError(DicomWebError, FailedPreconditionError):
    """The PACS refused the credentials (401) or the user (403)."""


class PacsTlsError(DicomWebError, FailedPreconditionError):
    """The PACS's TLS certificate could not be verified."""


class NoMatchingInstancesError(DicomWebError, NotFoundError):
    """The query matched no instance."""


class InstanceFetchError(DicomWebError, InternalError):
    """One instance could not be fetched or read; the others may be fine (the builder skips it)."""


@dataclass(frozen=True)
class Instance:
    """Where one instance lives on the PACS."""
    study_uid: str
    series_uid: str
    sop_uid: str

    @property
    def wado_path(self) -> str:
        return f"studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


@dataclass(frozen=True)
class Query:
    """Which instances to list: series of these modalities, studies from this date, at most `limit`."""
    modalities: tuple[str, ...] = ()
    since: str = ""  # YYYYMMDD: studies on or after this date
    limit: int = 0  # 0: all

    def __post_init__(self):
        if self.since and not re.fullmatch(r"\d{8}", self.since):
            raise DicomWebError(f"--since {self.since!r}: give the first study date as YYYYMMDD, e.g. 20240101")
        if self.limit < 0:
            raise DicomWebError(f"--limit {self.limit}: give a number of instances >= 0 (0: all)")

    @classmethod
    def parse(cls, modality: str = "", since: str = "", limit: int = 0) -> Query:
        """From the command line's --modality CR,DX --since 20240101 --limit N."""
        return cls(tuple(m.strip().upper() for m in modality.split(",") if m.strip()), since.strip(), limit or 0)

    def describe(self) -> str:
        parts = [f"modality {','.join(self.modalities)}" if self.modalities else "any modality"]
        parts += [f"studies since {self.since}"] if self.since else []
        return ", ".join(parts)

    def matches(self, modality: str, study_date: str) -> bool:
        """Does an instance found otherwise (a change feed) pass the same filters as a QIDO listing?"""
        if self.modalities and modality.upper() not in self.modalities:
            return False
        return not self.since or (bool(study_date) and study_date >= self.since)


def redacted(url: str) -> str:
    """The URL without any user:password@ in it: what messages and manifests show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@contextmanager
def _translated(url: str, what: str) -> Iterator[None]:
    """requests' and dicomweb-client's exceptions as DicomWebErrors that name the remedy."""
    import requests

    shown = redacted(url)
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise PacsTlsError(f"TLS verification of {shown} failed while {what}: pass the CA that signed the PACS's "
                           f"certificate with --dicomweb-ca FILE (dicomweb_ca); {_reason(exc)}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise PacsUnreachableError(f"could not reach the DICOMweb server {shown} while {what}: check --dicomweb "
                                   f"(dicomweb_url) and that the PACS is up; {_reason(exc)}") from exc
    except requests.HTTPError as exc:
        raise _http_error(shown, what, exc.response) from exc
    except requests.RequestException as exc:  # e.g. an answer that is not the JSON QIDO-RS promises
        raise DicomWebError(f"the DICOMweb server {shown} answered something unexpected while {what}: "
                            f"{_reason(exc)}; check that --dicomweb is its DICOMweb root") from exc


def _reason(exc: Exception) -> str:
    return str(exc.__context__ or exc).split("\n")[0][:200]


def _http_error(shown: str, what: str, response) -> DicomWebError:
    status = response.status_code if response is not None else 0
    if status == 401:
        return PacsAuthError(f"the PACS {shown} refused the credentials (HTTP 401) while {what}: {CREDENTIALS_HINT}")
    if status == 403:
        return PacsAuthError(f"the PACS {shown} denies this user (HTTP 403) while {what}: ask its administrator for "
                             "QIDO-RS and WADO-RS read access, or use another account")
    if status == 404:
        return InstanceFetchError(f"not found on the PACS (HTTP 404) while {what}: check that --dicomweb is the "
                                  "DICOMweb root (e.g. http://pacs:8042/dicom-web)")
    return InstanceFetchError(f"the PACS {shown} answered HTTP {status} while {what}")


class DicomWeb:
    """One PACS's DICOMweb API (dicomweb-client over a requests.Session that carries the credentials)."""

    def __init__(self, url: str, session):
        from dicomweb_client.api import DICOMwebClient

        self.url = url.rstrip("/")
        self.session = session
        try:
            self._client = DICOMwebClient(self.url, session=session, timeout=TIMEOUT_S)
        except ValueError as exc:
            raise DicomWebError(f"--dicomweb {redacted(url)!r} is not a DICOMweb URL: give "
                                "http(s)://host:port/dicom-web") from exc
        self._client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)

    @property
    def shown(self) -> str:
        return redacted(self.url)

    def instances(self, query: Query = Query()) -> list[Instance]:
        """Matching instances, study by study, series by series (at most query.limit)."""
        found: list[Instance] = []
        with _translated(self.url, "listing studies (QIDO-RS)"):
            for study in self._studies(query):
                for series in self._series(study, query):
                    found += self._instances_of(study, series, query.limit - len(found) if query.limit else 0)
                    if query.limit and len(found) >= query.limit:
                        return found[:query.limit]
        return found

    def _studies(self, query: Query) -> list[str]:
        filters = {"StudyDate": f"{query.since}-"} if query.since else {}
        searches = [dict(filters, ModalitiesInStudy=m) for m in query.modalities] or [filters]
        uids: dict[str, None] = {}  # in the PACS's order, each once
        for search in searches:
            uids.update(dict.fromkeys(_paged(self._client.search_for_studies, "0020000D", search_filters=search)))
        return list(uids)

    def _series(self, study: str, query: Query) -> list[str]:
        # Modality is matched here, per series, on every PACS: a study can hold a CT beside a CR.
        found = _paged(self._client.search_for_series, "0020000E", study_instance_uid=study)
        return [uid for uid, s in found.items()
                if not query.modalities or _value(s, "00080060").upper() in query.modalities]

    def report_instances(self, studies: Iterable[str]) -> list[Instance]:
        """The SR instances of these studies, whatever a query's modality filter says: reports are
        stored beside the images, in series of modality SR."""
        found: list[Instance] = []
        with _translated(self.url, "listing SR series (QIDO-RS)"):
            for study in studies:
                series = _paged(self._client.search_for_series, "0020000E", study_instance_uid=study,
                                search_filters={"Modality": SR_MODALITY})
                for uid, item in series.items():
                    if _value(item, "00080060").upper() == SR_MODALITY:  # a server may ignore the filter
                        found += self._instances_of(study, uid, 0)
        return found

    def _instances_of(self, study: str, series: str, limit: int) -> list[Instance]:
        found = _paged(self._client.search_for_instances, "00080018", limit, study_instance_uid=study,
                       series_instance_uid=series)
        return [Instance(study, series, sop) for sop in found]

    def instance_pages(self, query: Query = Query(), page: int = LISTING_PAGE) -> Iterator[list[Instance]]:
        """Every instance matching `query`'s modalities and study dates, by pages of root-level QIDO-RS
        (/instances): one request each time the iterator is advanced, so a caller can pace them. A
        page shorter than asked does not end it (a PACS may cap answers lower); an empty page, or one
        that brings nothing new (offset ignored), does."""
        filters = {"StudyDate": f"{query.since}-"} if query.since else {}
        for search in [dict(filters, Modality=m) for m in query.modalities] or [filters]:
            seen: set[str] = set()
            offset = 0
            while True:
                with _translated(self.url, "listing instances (QIDO-RS)"):
                    found = self._client.search_for_instances(limit=page, offset=offset, search_filters=search)
                instances = [Instance(_value(item, "0020000D"), _value(item, "0020000E"), sop) for item in found
                             if (sop := _value(item, "00080018")) and sop not in seen]
                if not instances:
                    break
                offset += len(found)
                seen.update(i.sop_uid for i in instances)
                yield instances

    def has_instance(self, instance: Instance) -> bool:
        """Whether the PACS still holds the instance (one QIDO-RS request)."""
        with _translated(self.url, "looking up an instance (QIDO-RS)"):
            found = self._client.search_for_instances(search_filters={"StudyInstanceUID": instance.study_uid,
                                                                      "SOPInstanceUID": instance.sop_uid})
        return any(_value(item, "00080018") == instance.sop_uid for item in found)  # a server may ignore filters

    def dataset(self, instance: Instance):
        """The instance as a pydicom Dataset (WADO-RS, in the transfer syntax the PACS stored)."""
        with _translated(self.url, "fetching an instance (WADO-RS)"):
            try:
                return self._client.retrieve_instance(instance.study_uid, instance.series_uid, instance.sop_uid)
            except (ValueError, IndexError) as exc:  # malformed multipart or not DICOM
                raise InstanceFetchError(f"the PACS sent something that is not one DICOM instance: {exc}") from exc

    def instance_bytes(self, study_uid: str, series_uid: str, sop_uid: str) -> bytes:
        """The instance's Part-10 bytes (with the DICM preamble), for cxr.images.preprocess."""
        return part10(self.dataset(Instance(study_uid, series_uid, sop_uid)))

    def check(self) -> None:
        """One cheap QIDO call, so a wrong URL, credential or CA fails before any work starts."""
        with _translated(self.url, "connecting (QIDO-RS)"):
            self._client.search_for_studies(limit=1)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DicomWeb:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _paged(search, uid_tag: str, limit: int = 0, **kwargs) -> dict[str, dict]:
    """Every result of a QIDO search by pages, keyed by UID. Not dicomweb-client's get_remaining: it
    pages until an empty answer, and some servers ignore `offset` with some filters (Orthanc 1.10 with
    ModalitiesInStudy), which would page forever. A page that brings nothing new ends it too."""
    found: dict[str, dict] = {}
    while True:
        size = min(PAGE, limit - len(found)) if limit else PAGE
        page = search(limit=size, offset=len(found), **kwargs)
        new = {uid: item for item in page if (uid := _value(item, uid_tag)) and uid not in found}
        found.update(new)
        if len(page) < size or not new or (limit and len(found) >= limit):
            return found


def _value(item: dict, tag: str) -> str:
    """A QIDO DICOM JSON attribute's first value as text ('' when absent)."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def session(user: str = "", password: str = "", token: str = "", ca: Path | None = None):
    """A requests.Session carrying basic auth or a bearer token, verifying TLS against `ca` when given."""
    import requests

    if token and (user or password):
        raise DicomWebError("give the PACS basic auth (--dicomweb-user and CXR_DICOMWEB_PASSWORD) or a token "
                            "(CXR_DICOMWEB_TOKEN), not both")
    if bool(user) != bool(password):
        raise DicomWebError("basic auth needs both --dicomweb-user and a password (CXR_DICOMWEB_PASSWORD keeps it "
                            "out of the shell history)")
    if ca is not None and not Path(ca).is_file():
        raise PacsTlsError(f"--dicomweb-ca {ca}: no such file; give the PEM file of the CA that signed the PACS's "
                           "certificate")
    result = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=POOL_SIZE)
    result.mount("http://", adapter)
    result.mount("https://", adapter)
    if user:
        result.auth = (user, password)
    if token:
        result.headers["Authorization"] = f"Bearer {token}"
    if ca is not None:
        result.verify = str(ca)
    return result


def connect(url: str, user: str = "", password: str = "", token: str = "", ca: Path | None = None) -> DicomWeb:
    """A DicomWeb client of the PACS at `url` (its DICOMweb root, e.g. http://pacs:8042/dicom-web)."""
    if not url:
        raise DicomWebError("no PACS named: pass --dicomweb http(s)://host:port/dicom-web or set dicomweb_url")
    return DicomWeb(url, session(user, password, token, ca))


def from_settings(settings) -> DicomWeb:
    """connect() with the settings' dicomweb_url, dicomweb_user/password or dicomweb_token, dicomweb_ca."""
    return connect(settings.dicomweb_url, settings.dicomweb_user, settings.dicomweb_password,
                   settings.dicomweb_token, settings.dicomweb_ca)


def part10(dataset) -> bytes:
    """A Dataset read from WADO-RS written back as a Part-10 file in its own transfer syntax: the pixel
    data stays as the PACS sent it (compressed data is not decoded and re-encoded)."""
    import pydicom

    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except (AttributeError, ValueError, TypeError) as exc:
        raise InstanceFetchError(f"the instance could not be written as a DICOM file: {exc}") from exc
    return buffer.getvalue()


# Projection from the header when ViewPosition (0018,5101) is missing. ImageLaterality is not used:
# it says which side of a paired organ is shown, not from which direction the beam came.
_VIEW_WORDS = {"PA": "Frontal", "AP": "Frontal", "FRONTAL": "Frontal", "POSTEROANTERIOR": "Frontal",
               "ANTEROPOSTERIOR": "Frontal", "LAT": "Lateral", "LATERAL": "Lateral", "LL": "Lateral", "RL": "Lateral"}


def projection(dataset) -> str:
    """Frontal / Lateral / '' from ViewPosition, else the view code's meaning, else the series or
    protocol description ("PA", "LAT", "lateral", "postero-anterior", ...)."""
    view = str(dataset.get("ViewPosition", "") or "").strip().upper()
    if view in VIEW_TO_PROJECTION:
        return VIEW_TO_PROJECTION[view]
    codes = dataset.get("ViewCodeSequence") or []
    hints = [str(item.get("CodeMeaning", "")) for item in codes]
    hints += [str(dataset.get(name, "") or "") for name in ("SeriesDescription", "ProtocolName")]
    for hint in hints:
        words = re.findall(r"[A-Z]+", hint.upper().replace("-", ""))
        found = {_VIEW_WORDS[w] for w in words if w in _VIEW_WORDS}
        if len(found) == 1:  # "PA and lateral" names both: no answer rather than a guess
            return found.pop()
    return ""


def record(dataset) -> Record:
    """The index row of one instance: its DICOM identities, the projection, no report (a PACS has none)."""
    sop = str(dataset.get("SOPInstanceUID", ""))
    study = str(dataset.get("StudyInstanceUID", ""))
    return Record(
        image_id=sop, path="", study_uid=study, filename=f"{sop}.dcm",  # path: no file, it lives in the PACS
        projection=projection(dataset), patient_id=str(dataset.get("PatientID", "") or study),
        study_instance_uid=study, series_instance_uid=str(dataset.get("SeriesInstanceUID", "")), sop_instance_uid=sop,
        accession_number=str(dataset.get("AccessionNumber", "") or ""),
        study_date=str(dataset.get("StudyDate", "") or ""),
        view_position=str(dataset.get("ViewPosition", "") or "").strip().upper(),
        patient_name=str(dataset.get("PatientName", "") or ""))


def orthanc_id(*identifiers: str) -> str:
    """Orthanc's id of a resource, computed from its DICOM identifiers: the SHA-1 of PatientID, then
    StudyInstanceUID, SeriesInstanceUID and SOPInstanceUID down to the resource's level, joined by '|',
    in groups of 8 hex digits joined by '-' (checked against Orthanc 1.10 in
    tests/integration/cxr/test_dicomweb.py). A deleted resource can no longer be asked for its id."""
    digest = hashlib.sha1("|".join(identifiers).encode()).hexdigest()
    return "-".join(digest[start:start + 8] for start in range(0, len(digest), 8))


@dataclass(frozen=True)
class Change:
    """A NewInstance event of Orthanc's change feed, resolved to the instance and what filters need. An
    instance stored again in place (OverwriteInstances, or /modify keeping its UIDs) has a new event."""
    seq: int
    instance: Instance | None  # None: deleted since
    modality: str = ""
    study_date: str = ""


class OrthancChanges:
    """Orthanc's REST change feed (/changes): the NewInstance events after a sequence number; and what
    tells of deletions, which the feed does not: how many instances Orthanc holds, their ids, and
    whether an instance of a given SOPInstanceUID is still there."""

    def __init__(self, rest_url: str, session):
        self.rest_url = rest_url.rstrip("/")
        self.session = session

    @staticmethod
    def root_of(dicomweb_url: str) -> str:
        """Orthanc's REST root: its DICOMweb URL without the /dicom-web suffix."""
        return re.sub(r"/dicom-web/?$", "", dicomweb_url.rstrip("/"))

    def _get(self, path: str, what: str, params: dict | None = None):
        return self._call("GET", path, what, params=params)

    def _call(self, method: str, path: str, what: str, **kwargs):
        with _translated(self.rest_url, what):
            response = self.session.request(method, self.rest_url + path, timeout=TIMEOUT_S, **kwargs)
            response.raise_for_status()
            return response.json()

    def is_orthanc(self) -> bool:
        """Whether the REST root answers as Orthanc does (/system with an ApiVersion)."""
        try:
            system = self._get("/system", "asking whether the PACS is Orthanc")
        except (InstanceFetchError, ValueError):
            return False
        return isinstance(system, dict) and "ApiVersion" in system

    def last(self) -> int:
        """The sequence number of the latest change: a follower starting now goes on from here."""
        return int(self._get("/changes", "reading Orthanc's change feed", {"last": ""})["Last"])

    def new_instances(self, since: int, limit: int, page: int = 200) -> tuple[list[Change], int]:
        """Up to `limit` NewInstance changes after `since`, and the sequence number read up to."""
        changes: list[Change] = []
        while len(changes) < limit:
            feed = self._get("/changes", "reading Orthanc's change feed", {"since": since, "limit": page})
            for event in feed["Changes"]:
                since = event["Seq"]
                if event["ChangeType"] == "NewInstance":
                    changes.append(self._resolve(event))
                    if len(changes) == limit:
                        return changes, since
            since = max(since, int(feed["Last"]))
            if feed["Done"]:
                break
        return changes, since

    def _resolve(self, event: dict) -> Change:
        try:
            tags = self._get(f"/instances/{event['ID']}/simplified-tags", "reading a new instance's tags")
        except InstanceFetchError:  # deleted since it arrived
            return Change(event["Seq"], None)
        instance = Instance(tags.get("StudyInstanceUID", ""), tags.get("SeriesInstanceUID", ""),
                            tags.get("SOPInstanceUID", ""))
        return Change(event["Seq"], instance, tags.get("Modality", ""), tags.get("StudyDate", ""))

    def count(self) -> int:
        """How many instances Orthanc holds (/statistics: one small request)."""
        return int(self._get("/statistics", "reading Orthanc's statistics")["CountInstances"])

    def instance_ids(self, since: int, limit: int) -> list[str]:
        """Up to `limit` of Orthanc's instance ids from position `since` of its listing (/instances)."""
        return list(self._get("/instances", "listing Orthanc's instances", {"since": since, "limit": limit}))

    def has_instance(self, sop_uid: str) -> bool:
        """Whether Orthanc holds an instance of this SOPInstanceUID (/tools/lookup), whatever its id."""
        found = self._call("POST", "/tools/lookup", "looking up an instance in Orthanc", data=sop_uid)
        return any(item.get("Type") == "Instance" for item in found)
