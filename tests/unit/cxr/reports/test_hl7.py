"""Reading ORU^R01 messages into Reports: the samples in tests/support/oru (synthetic patients), each field the
reader takes, the statuses, the escapes, and the errors, which name the field and never quote patient data."""

from __future__ import annotations

import logging

import pytest

from cxr.reports.hl7 import (AccessionFieldError, Condition, FieldRef, RejectedMessageError, ReportFieldError, Syntax,
                             check_header, iso_time, parse, read_header, read_reports)
from cxr.reports.report import ReportStatus
from support.hl7_messages import sample, with_field, without_segments

# What the samples hold of their patients; no error message may contain any of it.
PATIENT_DATA = ("SYN-PAT", "SYN-ALT", "SYNTHETIC", "TESTPATIENT", "SYN-ACC", "SYN-OBR18", "pleural", "lobe",
                "1.2.826.0.1.3680043.8.498")


def reports(message: str | bytes, accession: str = "OBR-3"):
    data = message.encode("utf-8") if isinstance(message, str) else message
    parsed, syntax = parse(data)
    check_header(parsed, syntax)
    return read_reports(parsed, syntax, FieldRef.parse(accession))


def refusal(message: str | bytes, accession: str = "OBR-3") -> RejectedMessageError | ReportFieldError:
    with pytest.raises((RejectedMessageError, ReportFieldError)) as caught:
        reports(message, accession)
    text = str(caught.value)
    assert not [d for d in PATIENT_DATA if d.lower() in text.lower()], text
    return caught.value


# --- the samples -----------------------------------------------------------------------------------------

def test_a_final_report_with_zds_and_gdt_lines():
    (report,) = reports(sample("final_gdt_zds"))
    assert report.accession_number == "SYN-ACC-1001"
    assert report.study_instance_uid == "1.2.826.0.1.3680043.8.498.10001"  # ZDS-1.1
    assert report.patient_id == "SYN-PAT-0001"
    assert report.status is ReportStatus.FINAL
    assert report.time == "2025-03-14T10:14:55+01:00"  # OBR-22 over OBR-7 and MSH-7
    assert report.source == "hl7"
    # One line per OBX, the FINDINGS: heading on a line of its own; \T\ is the subcomponent separator.
    assert report.findings == "Small right pleural effusion. Heart size normal.\nNo pneumothorax; lines & tubes: none."
    assert report.impression == "Small right pleural effusion \u2014 follow-up suggested."  # UTF-8 (MSH-18)


def test_ft_escapes_obx_section_codes_and_a_study_uid_in_an_obx():
    (report,) = reports(sample("preliminary_ft_sections"))
    assert report.status is ReportStatus.PRELIMINARY
    assert report.study_instance_uid == "1.2.826.0.1.3680043.8.498.20002"  # OBX 113014, type ST
    assert report.patient_id == "SYN-PAT-0002"  # PID-3: the first repetition
    assert report.time == "2025-03-15T07:15:00-05:00"  # no OBR-22: OBR-7
    # 18782-3 is the findings (its own "Findings:" heading dropped): \.br\ breaks lines, \T\ \S\ \F\ \E\ are
    # the delimiters, \H\ \N\ (highlighting) go, \X6F6B\ is hex.
    assert report.findings == ("Left lower lobe opacity\n(segment 6 & 10)\nTip at T4^T5 level; size 5|6 mm; "
                               "path C:\\films.\nMild cardiomegaly, ok.")
    # 19005-8 is the impression; its repetitions are lines. The NM dose and the OBX posted as wrong (OBX-11 W)
    # are left out.
    assert report.impression == "Left lower lobe pneumonia.\nRecommend follow-up in 6 weeks."
    assert "wrong patient" not in report.text and "0.12" not in report.text


def test_two_orders_are_two_reports():
    first, second = reports(sample("two_orders"))
    assert (first.accession_number, second.accession_number) == ("SYN-ACC-3001", "SYN-ACC-3002")
    assert (first.status, second.status) == (ReportStatus.FINAL, ReportStatus.CORRECTED)
    assert first.patient_id == second.patient_id == "SYN-PAT-0003"
    assert (first.time, second.time) == ("2025-03-16T11:55:00", "2025-03-16T11:58:00")  # no offset sent: none
    # &IMP names the impression; the &GDT line beside it, with no heading, is then the findings.
    assert (first.findings, first.impression) == ("Lungs are clear. No effusion.", "No acute cardiopulmonary process.")
    assert second.findings == "Stable cardiomediastinal silhouette."
    assert second.impression == "Corrected: mild atelectasis at the left base."


def test_each_group_takes_the_patient_of_the_pid_before_it():
    two = sample("two_orders")
    lines = two.split("\r")
    second_orc = [i for i, line in enumerate(lines) if line.startswith("ORC|")][1]
    lines.insert(second_orc, "PID|1||SYN-PAT-0004^^^SYNTH^MR")
    first, second = reports("\r".join(lines))
    assert (first.patient_id, second.patient_id) == ("SYN-PAT-0003", "SYN-PAT-0004")


# --- statuses --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("code, status", [("P", ReportStatus.PRELIMINARY), ("F", ReportStatus.FINAL),
                                          ("C", ReportStatus.CORRECTED), ("X", ReportStatus.CANCELLED),
                                          ("f", ReportStatus.FINAL)])
def test_obr_25_gives_the_status(code, status):
    (report,) = reports(with_field(sample("final_gdt_zds"), "OBR", 25, code))
    assert report.status is status
    assert bool(report.text) is (status is not ReportStatus.CANCELLED)  # a cancellation removes the text


@pytest.mark.parametrize("code, condition", [("R", Condition.TABLE_VALUE_NOT_FOUND), ("S", Condition.TABLE_VALUE_NOT_FOUND),
                                             ("", Condition.REQUIRED_FIELD_MISSING)])
def test_another_status_is_refused_naming_it_and_the_accepted_ones(code, condition):
    error = refusal(with_field(sample("final_gdt_zds"), "OBR", 25, code))
    assert isinstance(error, ReportFieldError) and error.ack_code == "AE"
    assert error.condition is condition and error.location == "OBR^1^25"
    assert "OBR-25" in str(error) and (repr(code) if code else "empty") in str(error)
    assert all(f"{c} (" in str(error) for c in "PFCX")


def test_a_status_that_is_not_a_code_is_not_quoted():
    error = refusal(with_field(sample("final_gdt_zds"), "OBR", 25, "SYNTHETIC^TESTPATIENT"))
    assert "a value not shown" in str(error)


# --- the study: accession field, study uid ----------------------------------------------------------------

@pytest.mark.parametrize("setting, expected", [("OBR-3", "SYN-ACC-1001"), ("OBR-18", "SYN-OBR18-1001"),
                                               ("obr.18", "SYN-OBR18-1001"), ("ORC-3", "SYN-ACC-1001"),
                                               ("OBR-2", "SYN-PL-1001")])
def test_the_accession_number_comes_from_the_field_the_setting_names(setting, expected):
    (report,) = reports(sample("final_gdt_zds"), setting)
    assert report.accession_number == expected  # component 1: the namespace after ^ is left


@pytest.mark.parametrize("setting", ["PID-3", "OBR", "OBR-0", "OBR-x", ""])
def test_an_accession_setting_that_names_no_order_field_is_refused(setting):
    with pytest.raises(AccessionFieldError, match="reports_accession_field"):
        FieldRef.parse(setting)


def test_a_report_without_accession_number_joins_by_its_study_uid():
    (report,) = reports(with_field(sample("final_gdt_zds"), "OBR", 3, ""))
    assert report.accession_number == "" and report.study_instance_uid == "1.2.826.0.1.3680043.8.498.10001"


def test_a_report_naming_no_study_is_refused_naming_the_fields():
    message = without_segments(with_field(sample("final_gdt_zds"), "OBR", 3, ""), "ZDS")
    error = refusal(message)
    assert error.ack_code == "AE" and error.condition is Condition.REQUIRED_FIELD_MISSING
    assert "OBR-3" in str(error) and "ZDS-1" in str(error) and error.location == "OBR^1^3"
    error = refusal(message, "OBR-20")  # the field the setting names is the one named
    assert "OBR-20" in str(error)


def test_a_study_uid_that_is_not_a_uid_is_passed_over():
    message = with_field(sample("final_gdt_zds"), "ZDS", 1, "not-a-uid^SYNTH-PACS^Application^DICOM")
    (report,) = reports(message)
    assert report.study_instance_uid == ""


def test_an_hd_study_uid_in_its_second_component():
    message = with_field(sample("preliminary_ft_sections"), "OBX", 2, "HD")
    message = with_field(message, "OBX", 5, "SYNTH^1.2.826.0.1.3680043.8.498.20003^ISO")
    (report,) = reports(message)
    assert report.study_instance_uid == "1.2.826.0.1.3680043.8.498.20003"


def test_a_report_without_a_patient_is_refused():
    for message in (without_segments(sample("final_gdt_zds"), "PID"), with_field(sample("final_gdt_zds"), "PID", 3, "")):
        error = refusal(message)
        assert error.ack_code == "AE" and "PID-3" in str(error)


# --- times -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, iso", [("2025", "2025"), ("202503", "2025-03"), ("20250314", "2025-03-14"),
                                        ("2025031410", "2025-03-14T10:00"), ("202503141015", "2025-03-14T10:15"),
                                        ("20250314101502", "2025-03-14T10:15:02"),
                                        ("20250314101502.25", "2025-03-14T10:15:02.250000"),
                                        ("20250314101502+0530", "2025-03-14T10:15:02+05:30"),
                                        ("202503141015-0800", "2025-03-14T10:15-08:00")])
def test_hl7_times_become_iso_8601_to_the_precision_sent(value, iso):
    assert iso_time(value) == iso


def test_the_time_falls_back_to_obr_7_then_msh_7():
    message = with_field(sample("final_gdt_zds"), "OBR", 22, "")
    assert reports(message)[0].time == "2025-03-14T09:10:00+01:00"
    assert reports(with_field(message, "OBR", 7, ""))[0].time == "2025-03-14T10:15:02+01:00"
    assert reports(with_field(with_field(message, "OBR", 7, ""), "MSH", 7, ""))[0].time == ""


@pytest.mark.parametrize("value", ["20251340", "2025-03-14", "20250314251000", "yesterday", "20250314+2500"])
def test_a_time_that_is_not_one_is_refused_naming_the_field(value):
    error = refusal(with_field(sample("final_gdt_zds"), "OBR", 22, value))
    assert "OBR-22" in str(error) and value not in str(error) and error.condition is Condition.DATA_TYPE_ERROR


# --- the message: type, version, framing, character sets ---------------------------------------------------

@pytest.mark.parametrize("kind, condition", [("ADT^A01^ADT_A01", Condition.UNSUPPORTED_MESSAGE_TYPE),
                                             ("ORM^O01", Condition.UNSUPPORTED_MESSAGE_TYPE),
                                             ("ORU^R30", Condition.UNSUPPORTED_EVENT_CODE),
                                             ("", Condition.UNSUPPORTED_MESSAGE_TYPE)])
def test_another_message_type_is_rejected(kind, condition):
    error = refusal(with_field(sample("final_gdt_zds"), "MSH", 9, kind))
    assert error.ack_code == "AR" and error.condition is condition and "MSH-9" in str(error)
    assert "only ORU^R01" in str(error)


@pytest.mark.parametrize("version, accepted", [("2.1", True), ("2.3.1", True), ("2.5.1^USA", True), ("2.9", True),
                                               ("3.0", False), ("2", False), ("", False), ("2.10", False)])
def test_versions_2_1_to_2_9_are_accepted(version, accepted):
    message = with_field(sample("final_gdt_zds"), "MSH", 12, version)
    if accepted:
        assert len(reports(message)) == 1
    else:
        error = refusal(message)
        assert error.ack_code == "AR" and error.condition is Condition.UNSUPPORTED_VERSION_ID


@pytest.mark.parametrize("frame", [b"", b"hello", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"MSH", b"MSH|||||",
                                   b"MSHa^~\\&abc", b"\x00\xff" * 40, b"PID|1||SYN-PAT-0001\rMSH|^~\\&|A"])
def test_what_is_not_an_hl7_message_is_rejected(frame):
    error = refusal(frame)
    assert error.ack_code == "AR" and error.condition is Condition.SEGMENT_SEQUENCE_ERROR


def test_a_batch_of_messages_in_one_frame_is_rejected():
    error = refusal(sample("final_gdt_zds") + sample("two_orders"))
    assert error.ack_code == "AR" and "one message per MLLP frame" in str(error)


def test_the_header_of_a_refused_frame_is_still_read_for_its_ack():
    for refused in (with_field(sample("final_gdt_zds"), "MSH", 18, "EBCDIC"), sample("two_orders") * 2):
        assert read_header(refused.encode("utf-8")).control_id in ("SYN-MSG-0001", "SYN-MSG-0003")
    assert read_header(b"garbage") is None and read_header(b"MSH|") is None


def test_an_oru_without_obr_is_an_error():
    error = refusal(without_segments(without_segments(sample("final_gdt_zds"), "OBR"), "ORC"))
    assert error.ack_code == "AE" and "OBR" in str(error)


def test_segments_ended_by_lf_or_crlf_or_with_blank_lines_are_read_alike():
    text = sample("two_orders")
    expected = reports(text)
    for ending in ("\n", "\r\n", "\r\r\n"):
        assert reports(text.replace("\r", ending)) == expected


def test_a_line_feed_inside_a_value_is_a_line_break_there():
    message = with_field(sample("final_gdt_zds"), "OBX", 5, "Heart size normal.\nMSH-like words stay.", occurrence=3)
    (report,) = reports(message)
    assert "Heart size normal.\nMSH-like words stay." in report.findings


def test_character_sets():
    text = with_field(sample("final_gdt_zds"), "MSH", 18, "8859/1")
    (report,) = reports(text.replace("\u2014", "\u00e9").encode("latin-1"))
    assert report.impression.startswith("Small right pleural effusion \u00e9")
    # Unlabelled: UTF-8, else Latin-1.
    unlabelled = with_field(sample("final_gdt_zds"), "MSH", 18, "").replace("\u2014", "\u00e9")
    assert "\u00e9" in reports(unlabelled.encode("utf-8"))[0].impression
    assert "\u00e9" in reports(unlabelled.encode("latin-1"))[0].impression
    error = refusal(with_field(sample("final_gdt_zds"), "MSH", 18, "EBCDIC"))
    assert error.ack_code == "AR" and "MSH-18" in str(error) and "'EBCDIC'" in str(error)
    error = refusal(with_field(sample("final_gdt_zds"), "MSH", 18, "ASCII"))  # the em dash is not ASCII
    assert error.ack_code == "AR" and "MSH-18" in str(error)


def test_other_delimiters_are_honoured():
    text = sample("final_gdt_zds").replace("|", "#")
    (report,) = reports(text)
    assert report.accession_number == "SYN-ACC-1001" and report.patient_id == "SYN-PAT-0001"
    assert "lines & tubes" in report.findings


# --- escapes ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, text", [
    ("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f", "a|b^c&d~e\\f"),
    ("one\\.br\\two\\.sp2\\three\\.ce\\four", "one\ntwo\n\nthree\nfour"),
    ("x\\.sk3\\y\\.in+4\\\\.ti-2\\\\.fi\\\\.nf\\z", "x   yz"),
    ("\\H\\bold\\N\\ \\Zlocal\\\\C2842\\\\M2442\\plain", "bold plain"),
    ("\\X48656C6C6F\\ \\X0D0A\\end", "Hello \nend"),
    ("\\Xzz\\bad hex", "bad hex"),
    ("\\.sp99999\\", "\n" * 100),  # capped
    ("a\\.sp+-3\\b", "a\nb"),
    ("unclosed \\F", "unclosed \\F"),
    ("no escapes", "no escapes"),
])
def test_escapes_are_decoded(raw, text):
    assert "\n".join(Syntax().lines(_obx(raw), 5)) == text


def _obx(value: str):
    import hl7

    return hl7.parse(f"MSH|^~\\&|A|B|C|D|20250101||ORU^R01|1|P|2.5\rOBX|1|TX|&GDT||{value}").segments("OBX")[0]


def test_reading_a_malformed_message_logs_nothing_of_it(caplog):
    """python-hl7's own unescape logs the field it cannot decode; the reader never calls it."""
    message = with_field(sample("final_gdt_zds"), "OBX", 5, "SYN-PAT-0001 \\\\ \\Q\\ \\X1\\ pleural")
    with caplog.at_level(logging.DEBUG):
        reports(message)
        refusal(with_field(message, "OBR", 25, "Q"))
    assert not [r for r in caplog.records if any(d in r.getMessage() for d in PATIENT_DATA)]
