"""The ACK of each outcome: MSA-1 the code, MSA-2 the control id, sender and receiver swapped, a fresh control id,
now, the version echoed, the reason in MSA-3 and ERR; and a readable ACK to a frame that held no message."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import hl7

from cxr.reports.hl7 import Condition, Header, ReportFieldError, parse
from cxr.reports.hl7_ack import APPLICATION, Outcome, ack, encode
from support.hl7_messages import fields, sample

NOW = datetime(2025, 3, 14, 10, 20, 0, tzinfo=timezone(timedelta(hours=1)))


def _header(name: str = "final_gdt_zds") -> Header:
    message, syntax = parse(sample(name).encode("utf-8"))
    return Header.of(message, syntax)


def test_aa_swaps_sender_and_receiver_and_answers_the_control_id():
    reply = str(ack(_header(), Outcome.accepted(1, 1), NOW))
    msh, msa = fields(reply, "MSH"), fields(reply, "MSA")
    assert msh[2:6] == ["CXR-RETRIEVAL", "SYNTH-HOSPITAL", "SYNTH-RIS", "SYNTH-HOSPITAL"]  # MSH-3..6
    assert msh[6] == "20250314102000+0100"  # MSH-7: now, with its offset
    assert msh[8] == "ACK^R01^ACK"
    assert msh[9] and msh[9] != "SYN-MSG-0001"  # MSH-10: a control id of its own
    assert msh[10:12] == ["P", "2.5.1"]  # processing id and version echoed
    assert msa == ["MSA", "AA", "SYN-MSG-0001"]
    assert "ERR|" not in reply
    assert hl7.parse(reply).segment("MSA")[1][0] == "AA"  # a message python-hl7 reads back


def test_two_acks_have_two_control_ids():
    assert fields(str(ack(_header(), Outcome.accepted(1, 0))), "MSH")[9] != \
        fields(str(ack(_header(), Outcome.accepted(1, 0))), "MSH")[9]


def test_ae_carries_the_reason_in_msa_3_and_err():
    error = ReportFieldError("OBR-25 (result status) is 'R': accepted are P, F, C, X",
                             Condition.TABLE_VALUE_NOT_FOUND, "OBR^1^25")
    reply = str(ack(_header(), Outcome.of(error), NOW))
    assert fields(reply, "MSA") == ["MSA", "AE", "SYN-MSG-0001", "OBR-25 (result status) is 'R': accepted are P, F, C, X"]
    err = fields(reply, "ERR")
    assert err[1] == "OBR^1^25^103&Table value not found&HL70357"  # ERR-1, for v2.3/2.4 readers
    assert err[2] == "OBR^1^25"  # ERR-2: the location
    assert err[3] == "103^Table value not found^HL70357"  # ERR-3: the condition
    assert err[4] == "E" and err[8] == fields(reply, "MSA")[3]  # ERR-4 severity, ERR-8 the user message


def test_a_reason_with_delimiters_is_escaped():
    reply = str(ack(_header(), Outcome("AE", "a|b^c&d~e\\f", Condition.APPLICATION_INTERNAL_ERROR), NOW))
    assert fields(reply, "MSA")[3] == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_an_ack_to_a_frame_without_a_header():
    reply = str(ack(None, Outcome("AR", "not a message", Condition.SEGMENT_SEQUENCE_ERROR, "MSH"), NOW))
    msh = fields(reply, "MSH")
    assert msh[2] == APPLICATION and msh[8] == "ACK" and msh[11] == "2.5"
    assert fields(reply, "MSA") == ["MSA", "AR", "", "not a message"]


def test_the_ack_uses_the_message_delimiters_and_character_set():
    text = sample("final_gdt_zds").replace("|", "#").replace("SYNTH-RIS", "SYNTH-R\u00cdS")
    message, syntax = parse(text.encode("utf-8"))
    data = encode(ack(Header.of(message, syntax), Outcome.accepted(1, 0)), syntax.codec)
    assert data.decode("utf-8").startswith("MSH#^~\\&#CXR-RETRIEVAL#SYNTH-HOSPITAL#SYNTH-R\u00cdS#")
    assert "\rMSA#AA#SYN-MSG-0001\r" in data.decode("utf-8")


def test_describe_says_counts_and_reasons_only():
    assert Outcome.accepted(2, 1).describe() == ("AA (2 reports stored: 1 attached to an indexed study, 1 waiting "
                                                  "for its study)")
    assert Outcome("AR", "why", Condition.SEGMENT_SEQUENCE_ERROR).describe() == "AR (why)"
