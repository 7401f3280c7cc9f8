"""HL7 v2 ORU^R01 from the RIS: one frame's bytes -> the message's header and its Reports. Parsing only, no I/O.

What is read, per ORC/OBR group (one Report each):
- the accession number: component 1 of OBR-3 (the filler order number), or of the field the setting
  reports_accession_field names (OBR-18, OBR-2, ORC-3, ...);
- the StudyInstanceUID where the message carries one: ZDS-1.1 (the Z segment IHE Scheduled Workflow uses), else
  an OBX of type ST, RP or HD whose OBX-3 is 113014, 110180 or StudyInstanceUID;
- the patient id: PID-3.1, first repetition, of the PID before the group (required: the intake checks it against
  the study's, and a report that names no patient cannot be checked);
- the status: OBR-25, P preliminary, F final, C corrected (replaces the text), X cancelled (removes it);
- the time: OBR-22, else OBR-7, else MSH-7, as ISO 8601 (with the sender's UTC offset where it gives one);
- the text: OBX-5 of the TX, FT and ST OBX segments, repetitions and segments joined by newlines, escapes
  decoded; OBX-3 says which section a segment is (SECTION_CODES), else the FINDINGS:/IMPRESSION: headings do.

Errors (Hl7Error) carry the acknowledgement code and the HL7 condition they are answered with, and never quote the
message: only codes from HL7 tables (a status, a message type, a version, a character set) may appear in them.
The library (python-hl7) splits segments and fields and builds the ACK; the values are unescaped here, because its
unescape logs the field it cannot decode, and a field is patient data.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import hl7

from cxr.errors import InvalidArgumentError
from cxr.reports.report import InvalidReportError, Report, ReportStatus, sections

SOURCE = "hl7"
MESSAGE_TYPE = ("ORU", "R01")
VERSION = re.compile(r"2\.[1-9](\.\d{1,2})?")  # HL7 v2.1 to v2.9
STATUSES = {"P": ReportStatus.PRELIMINARY, "F": ReportStatus.FINAL, "C": ReportStatus.CORRECTED,
            "X": ReportStatus.CANCELLED}
TEXT_TYPES = {"TX", "FT", "ST"}
UID_TYPES = {"ST", "RP", "HD"}
STUDY_UID_CODES = {"113014", "110180", "studyinstanceuid", "study instance uid"}
# OBX-3 (identifier or text, lower case) -> the section the segment's text is. Others (&GDT, the General
# Diagnostic Text, a RIS's own codes) are split by their headings.
SECTION_CODES = {"19005-8": "impression", "&imp": "impression", "impression": "impression",
                 "conclusion": "impression", "18782-3": "findings", "59776-5": "findings", "&fnd": "findings",
                 "findings": "findings"}
SKIPPED_RESULTS = {"D", "W"}  # OBX-11: deleted; posted as wrong (sent for the wrong patient, say)
# MSH-18 (HL7 table 0211) -> Python codec. An empty MSH-18 reads UTF-8, else Latin-1: the standard says ASCII,
# RIS send either unlabelled.
CHARSETS = {"ASCII": "ascii", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "8859/2": "iso8859-2",
            "8859/3": "iso8859-3", "8859/4": "iso8859-4", "8859/5": "iso8859-5", "8859/6": "iso8859-6",
            "8859/7": "iso8859-7", "8859/8": "iso8859-8", "8859/9": "iso8859-9", "8859/15": "iso8859-15",
            "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5"}
MAX_REPEAT = 100  # \.sp99999\ and friends: a formatting count is capped, not honoured into a huge string
# The values a reason may quote, each as its HL7 table writes them: anything else (a name typed in the wrong
# field) is not shown.
SHOWN_STATUS = re.compile(r"[A-Za-z]{1,2}")
SHOWN_TYPE = re.compile(r"[A-Z0-9]{3}(\^[A-Z0-9]{3})?(\^[A-Z0-9_]{3,7})?")
SHOWN_VERSION = re.compile(r"\d{1,2}(\.\d{1,2}){0,2}")
SHOWN_CHARSET = re.compile(r"[A-Za-z0-9/ -]{1,16}")
_UID = re.compile(r"[0-2](\.(0|[1-9]\d*))+")
_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")
_HEADING = re.compile(r"^\s*(findings|impression|conclusion)\s*:\s*", re.IGNORECASE)


class Condition(enum.IntEnum):
    """HL7 table 0357, message error condition codes: what ERR-3 says went wrong."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_VERSION_ID = 203
    APPLICATION_INTERNAL_ERROR = 207

    @property
    def text(self) -> str:
        return self.name.replace("_", " ").capitalize().replace(" id", " ID")


class Hl7Error(InvalidReportError):
    """A message answered AE (its content is wrong: fix and send again) or AR (it was refused as a message)."""

    ack_code = "AE"

    def __init__(self, reason: str, condition: Condition, location: str = ""):
        super().__init__(reason)
        self.condition = condition
        self.location = location  # ERR-2: segment^sequence^field, e.g. OBR^1^25


class RejectedMessageError(Hl7Error):
    """AR: unreadable, not ORU^R01, or an unsupported version or character set."""

    ack_code = "AR"


class ReportFieldError(Hl7Error):
    """AE: a field a report needs is empty or holds a value not accepted."""


class AccessionFieldError(InvalidArgumentError):
    """The setting reports_accession_field does not name a field of OBR or ORC."""


@dataclass(frozen=True)
class FieldRef:
    """A field of a segment, `SEG-N` as HL7 writes it (OBR-3)."""

    segment: str
    number: int

    @classmethod
    def parse(cls, spec: str) -> FieldRef:
        found = re.fullmatch(r"(OBR|ORC)[-.](\d{1,3})", spec.strip().upper())
        if not found or int(found[2]) < 1:
            raise AccessionFieldError(f"reports_accession_field is {spec!r}: name a field of OBR or ORC as HL7 "
                                      "writes it, e.g. OBR-3 (the filler order number), OBR-18 or ORC-3")
        return cls(found[1], int(found[2]))

    def __str__(self) -> str:
        return f"{self.segment}-{self.number}"


@dataclass(frozen=True)
class Syntax:
    """A message's delimiters (MSH-1, MSH-2) and character set, to read its values."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    codec: str = "utf-8"

    @classmethod
    def of(cls, message: hl7.Message, codec: str) -> Syntax:
        _, field_sep, repetition, component, subcomponent = message.separators
        return cls(field_sep, component, repetition, message.esc, subcomponent, codec)

    def value(self, segment: hl7.Segment, number: int, component: int = 1) -> str:
        """Component `component` of the first repetition of field `number`, unescaped ("" when absent)."""
        first = raw(segment, number).split(self.repetition)[0]
        parts = first.split(self.component)
        return self.unescape(parts[component - 1].split(self.subcomponent)[0]) if component <= len(parts) else ""

    def lines(self, segment: hl7.Segment, number: int) -> list[str]:
        """Every repetition of a text field (TX, FT, ST), whole and unescaped: a line each."""
        texts = [self.unescape(text) for text in raw(segment, number).split(self.repetition)]
        return [re.sub(r"\r\n?", "\n", text) for text in texts]  # a \X0D\ sent for a line break

    def unescape(self, text: str) -> str:
        """HL7 escapes (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\, FT formatting) decoded; highlighting and
        character-set switches dropped. An unclosed escape stays as it is."""
        if self.escape not in text:
            return text
        parts = text.split(self.escape)  # literal, sequence, literal, ...
        unclosed = [self.escape + parts.pop()] if len(parts) % 2 == 0 else []
        return "".join([part if i % 2 == 0 else self._sequence(part) for i, part in enumerate(parts)] + unclosed)

    def _sequence(self, name: str) -> str:
        plain = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition,
                 "E": self.escape, ".br": "\n", ".ce": "\n"}
        if name in plain:
            return plain[name]
        if name.startswith("X"):
            try:
                return bytes.fromhex(name[1:]).decode(self.codec, "replace")
            except ValueError:
                return ""
        count = min(int(name[3:]) if re.fullmatch(r"[+-]?\d{1,6}", name[3:]) else 1, MAX_REPEAT)
        return {".sp": "\n" * max(count, 1), ".sk": " " * max(count, 0)}.get(name[:3], "")  # .in .ti .fi .nf H N Z C M


def raw(segment: hl7.Segment, number: int) -> str:
    """Field `number` of a segment as sent, escapes and all ("" when absent). MSH-n is segment[n] too."""
    return str(segment[number]) if number < len(segment) else ""


def segment_id(segment: hl7.Segment) -> str:
    return str(segment[0]) if len(segment) else ""


def _msh_fields(frame: bytes) -> list[bytes]:
    """The fields of the frame's first segment, which must be an MSH with its delimiters."""
    header = re.split(rb"[\r\n]", frame, maxsplit=1)[0]
    fields = header.split(header[3:4]) if len(header) > 8 else []
    delimiters = fields[1] if len(fields) > 1 else b""
    if not header.startswith(b"MSH") or header[3:4].isalnum() or len(delimiters) not in (4, 5) \
            or len(set(delimiters + header[3:4])) != len(delimiters) + 1:
        raise RejectedMessageError("the frame holds no HL7 v2 message: it must begin with an MSH segment and the "
                                   "message's delimiters", Condition.SEGMENT_SEQUENCE_ERROR, "MSH^1^2")
    return fields


def decode(frame: bytes) -> tuple[str, str]:
    """The frame's text and the codec it was read with (MSH-18)."""
    fields = _msh_fields(frame)
    delimiters = fields[1]
    declared = fields[17].split(delimiters[1:2])[0].decode("ascii", "replace").strip() if len(fields) > 17 else ""
    codecs = [CHARSETS.get(declared.upper())] if declared else ["utf-8", "latin-1"]
    if codecs == [None]:
        raise RejectedMessageError(f"MSH-18 (character set) is {_shown(declared, SHOWN_CHARSET)}: accepted are "
                                   f"{', '.join(CHARSETS)} or none (UTF-8)", Condition.TABLE_VALUE_NOT_FOUND,
                                   "MSH^1^18")
    for codec in codecs:
        try:
            return frame.decode(codec), codec
        except UnicodeDecodeError:
            continue
    raise RejectedMessageError(f"the message is not valid {declared} text, the character set MSH-18 names",
                               Condition.DATA_TYPE_ERROR, "MSH^1^18")


def parse(frame: bytes) -> tuple[hl7.Message, Syntax]:
    """One MLLP frame's message (RejectedMessageError when it is not one readable HL7 v2 message)."""
    text, codec = decode(frame)
    # Segments end with CR. A sender that ends them with CRLF, or with LF and no CR at all, or leaves empty lines,
    # is read all the same; a lone LF beside CRs is inside a value (a line break sent unescaped) and stays there.
    segments = [s for s in (re.split(r"\r\n?", text) if "\r" in text else text.split("\n")) if s.strip()]
    if sum(s.startswith("MSH") for s in segments) != 1:
        raise RejectedMessageError("the frame holds more than one message (a batch): send one message per MLLP "
                                   "frame", Condition.SEGMENT_SEQUENCE_ERROR, "MSH")
    try:
        message = hl7.parse("\r".join(segments))
    except Exception as exc:  # the library fails in many ways on malformed input; all mean the same to the sender
        raise RejectedMessageError("the frame is not a readable HL7 v2 message", Condition.SEGMENT_SEQUENCE_ERROR,
                                   "MSH") from exc
    return message, Syntax.of(message, codec)


@dataclass(frozen=True)
class Header:
    """What an ACK needs of the message it answers: MSH as sent (raw fields)."""

    field: str = "|"
    delimiters: str = "^~\\&"
    sending: tuple[str, str] = ("", "")  # MSH-3, MSH-4: application, facility
    receiving: tuple[str, str] = ("", "")  # MSH-5, MSH-6
    event: str = ""  # MSH-9.2
    control_id: str = ""  # MSH-10
    processing_id: str = "P"  # MSH-11
    version: str = "2.5"  # MSH-12

    @classmethod
    def of(cls, message: hl7.Message, syntax: Syntax) -> Header:
        msh = message.segments("MSH")[0]
        return cls(syntax.field, raw(msh, 2), (raw(msh, 3), raw(msh, 4)), (raw(msh, 5), raw(msh, 6)),
                   syntax.value(msh, 9, 2), raw(msh, 10), raw(msh, 11) or "P", raw(msh, 12) or "2.5")


def read_header(frame: bytes) -> Header | None:
    """The header of a frame that cannot be read as a whole (a batch, an unknown character set), read as Latin-1 so
    that its ACK still names its control id; None when there is none."""
    try:
        message = hl7.parse(frame[3:4].join(_msh_fields(frame)).decode("latin-1"))
        return Header.of(message, Syntax.of(message, "latin-1"))
    except Exception:  # best effort: the frame is refused all the same
        return None


def check_header(message: hl7.Message, syntax: Syntax) -> None:
    """RejectedMessageError unless the message is an ORU^R01 of HL7 v2.1-2.9."""
    msh = message.segments("MSH")[0]
    kind = (syntax.value(msh, 9, 1), syntax.value(msh, 9, 2))
    if kind != MESSAGE_TYPE:
        condition = Condition.UNSUPPORTED_EVENT_CODE if kind[0] == "ORU" else Condition.UNSUPPORTED_MESSAGE_TYPE
        shown = _shown("^".join(k for k in kind if k), SHOWN_TYPE)
        raise RejectedMessageError(f"unsupported message type {shown} (MSH-9): only ORU^R01, the "
                                   "observation result that carries a report, is accepted", condition, "MSH^1^9")
    version = syntax.value(msh, 12)
    if not VERSION.fullmatch(version):
        raise RejectedMessageError(f"unsupported HL7 version {_shown(version, SHOWN_VERSION)} (MSH-12): versions 2.1 to 2.9 are "
                                   "accepted", Condition.UNSUPPORTED_VERSION_ID, "MSH^1^12")


@dataclass
class _Group:
    """One order's segments: its ORC (optional), OBR, OBX and ZDS, and the patient of the PID before it."""

    patient: str
    orc: hl7.Segment | None = None
    obr: hl7.Segment | None = None
    obx: list[hl7.Segment] = field(default_factory=list)
    zds: hl7.Segment | None = None


def _groups(message: hl7.Message, syntax: Syntax) -> list[_Group]:
    groups: list[_Group] = []
    patient, current = "", None
    for segment in message:
        kind = segment_id(segment)
        if kind == "PID":
            patient, current = syntax.value(segment, 3).strip(), None
        elif kind == "ORC" or kind == "OBR" and (current is None or current.obr is not None):
            current = _Group(patient)
            groups.append(current)
        if current is None:
            continue
        if kind in ("ORC", "OBR", "ZDS"):
            setattr(current, kind.lower(), segment)
        elif kind == "OBX":
            current.obx.append(segment)
    return groups


def read_reports(message: hl7.Message, syntax: Syntax, accession: FieldRef = FieldRef("OBR", 3)) -> list[Report]:
    """The reports of an ORU^R01, one per ORC/OBR group (ReportFieldError naming the field that is wrong)."""
    groups = _groups(message, syntax)
    if not any(g.obr is not None for g in groups):
        raise ReportFieldError("the message has no OBR segment: an ORU^R01 carries a report in an OBR and its OBX "
                               "segments", Condition.SEGMENT_SEQUENCE_ERROR, "OBR")
    msh_time = syntax.value(message.segments("MSH")[0], 7)
    return [_report(group, n, syntax, accession, msh_time) for n, group in enumerate(groups, 1)]


def _report(group: _Group, n: int, syntax: Syntax, accession: FieldRef, msh_time: str) -> Report:
    if group.obr is None:
        raise ReportFieldError(f"ORC #{n} has no OBR after it", Condition.SEGMENT_SEQUENCE_ERROR, f"ORC^{n}")
    status = _status(group.obr, n, syntax)
    accession_segment = group.obr if accession.segment == "OBR" else group.orc
    accession_number = syntax.value(accession_segment, accession.number).strip() if accession_segment else ""
    study_uid = _study_uid(group, syntax)
    if not (accession_number or study_uid):
        raise ReportFieldError(f"{accession} (the accession number, setting reports_accession_field) is empty and "
                               "the message carries no StudyInstanceUID (ZDS-1, or an OBX 113014): the report names "
                               "no study", Condition.REQUIRED_FIELD_MISSING, f"{accession.segment}^{n}^{accession.number}")
    if not group.patient:
        raise ReportFieldError("PID-3 (patient identifier list) is empty or no PID precedes the OBR: a report must "
                               "name its patient, to be checked against the study's", Condition.REQUIRED_FIELD_MISSING,
                               "PID^1^3")
    findings, impression = ("", "") if status is ReportStatus.CANCELLED else _text(group.obx, syntax)
    return Report(accession_number=accession_number, study_instance_uid=study_uid, patient_id=group.patient,
                  status=status, time=_time(group.obr, n, syntax, msh_time), findings=findings,
                  impression=impression, source=SOURCE)


def _status(obr: hl7.Segment, n: int, syntax: Syntax) -> ReportStatus:
    code = syntax.value(obr, 25).strip().upper()
    if code not in STATUSES:
        accepted = ", ".join(f"{c} ({s.value})" for c, s in STATUSES.items())
        raise ReportFieldError(f"OBR-25 (result status) is {_shown(code, SHOWN_STATUS)}: accepted are {accepted}",
                               Condition.TABLE_VALUE_NOT_FOUND if code else Condition.REQUIRED_FIELD_MISSING,
                               f"OBR^{n}^25")
    return STATUSES[code]


def _study_uid(group: _Group, syntax: Syntax) -> str:
    """ZDS-1.1, else an OBX naming the study's UID; a value that is not a UID is passed over."""
    candidates = [syntax.value(group.zds, 1)] if group.zds is not None else []
    for obx in group.obx:
        if syntax.value(obx, 2).upper() in UID_TYPES and _code(obx, syntax) & STUDY_UID_CODES:
            candidates += [syntax.value(obx, 5, 1), syntax.value(obx, 5, 2)]  # HD may hold it in its 2nd component
    return next((c.strip() for c in candidates if _UID.fullmatch(c.strip()) and len(c.strip()) <= 64), "")


def _code(obx: hl7.Segment, syntax: Syntax) -> set[str]:
    """OBX-3's identifier and text, lower case."""
    return {syntax.value(obx, 3, 1).strip().lower(), syntax.value(obx, 3, 2).strip().lower()} - {""}


def _text(obx_segments: list[hl7.Segment], syntax: Syntax) -> tuple[str, str]:
    """(findings, impression) of a group's text OBX segments."""
    named: dict[str, list[str]] = {"findings": [], "impression": []}
    general: list[str] = []
    for obx in obx_segments:
        codes = _code(obx, syntax)
        if (syntax.value(obx, 2).upper() not in TEXT_TYPES or codes & STUDY_UID_CODES
                or syntax.value(obx, 11).strip().upper() in SKIPPED_RESULTS):
            continue
        text = "\n".join(syntax.lines(obx, 5))
        section = next((SECTION_CODES[c] for c in sorted(codes) if c in SECTION_CODES), None)
        if section:
            named[section].append(_HEADING.sub("", text, count=1))
        else:
            general.append(text)
    body = "\n".join(general)
    findings, impression = sections(body)
    if named["impression"] and not named["findings"] and (findings, impression) == ("", body.strip()):
        findings, impression = impression, ""  # no headings, and the impression came on its own: this is the rest
    return _joined(findings, *named["findings"]), _joined(impression, *named["impression"])


def _joined(*parts: str) -> str:
    return "\n".join(p.strip() for p in parts if p.strip())


def _time(obr: hl7.Segment, n: int, syntax: Syntax, msh_time: str) -> str:
    for value, where in ((syntax.value(obr, 22), f"OBR^{n}^22"), (syntax.value(obr, 7), f"OBR^{n}^7"),
                         (msh_time, "MSH^1^7")):
        if value.strip():
            return iso_time(value.strip(), where)
    return ""


def iso_time(value: str, where: str = "") -> str:
    """An HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]) in ISO 8601, to the precision sent."""
    found = _DTM.fullmatch(value)
    try:
        if not found:
            raise ValueError(value)
        year, month, day, hour, minute, second, fraction, offset = found.groups()
        sign = -1 if offset and offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:]))) if offset else None
        if hour is None:  # a date: ISO 8601 gives it no offset
            date(int(year), int(month or 1), int(day or 1))  # validates
            return "-".join(part for part in (year, month, day) if part)
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0),
                          int((fraction or "0").ljust(6, "0")), zone)
    except (ValueError, TypeError) as exc:
        field_name = "-".join(where.split("^")[::2]) if where else "the time"
        raise ReportFieldError(f"{field_name} is not an HL7 date/time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])",
                               Condition.DATA_TYPE_ERROR, where) from exc
    return moment.isoformat(timespec="microseconds" if fraction else "seconds" if second else "minutes")


def _shown(code: str, shape: re.Pattern) -> str:
    """A table code as a reason may quote it: in the table's shape, else not at all."""
    return repr(code) if shape.fullmatch(code) else "empty" if not code else "a value not shown"
