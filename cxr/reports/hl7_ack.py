"""The acknowledgement that answers each HL7 v2 message (original mode): AA accepted; AE an error in its content,
which the sender's operator fixes before sending it again; AR refused as a message (unreadable, not ORU^R01, an
unsupported version) or not stored for a reason of ours, in which case the same message may be sent again later.

MSA-1 is the code and MSA-2 the message's control id (MSH-10); an AE or AR carries its reason in MSA-3 and in an ERR
segment (ERR-1 for v2.3/2.4 readers, ERR-2 to ERR-8 for later ones) with the HL7 table 0357 condition. The reason
never holds patient data (cxr.reports.hl7 keeps its errors so). python-hl7's Message.create_ack swaps sender and
receiver, copies the trigger event, processing id and version, and makes a fresh control id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import hl7

from cxr.reports.hl7 import Condition, Header, Hl7Error

APPLICATION = "CXR-RETRIEVAL"  # MSH-3 of an ACK to a message that named no receiving application


@dataclass(frozen=True)
class Outcome:
    """What became of one message."""

    ack_code: str  # AA, AE or AR
    reason: str = ""  # AE, AR: why, for the sender's operator
    condition: Condition = Condition.ACCEPTED
    location: str = ""  # ERR-2, segment^sequence^field
    stored: int = 0  # AA: reports stored
    attached: int = 0  # of them, those whose study is indexed (the others wait for it)

    @classmethod
    def accepted(cls, stored: int, attached: int) -> Outcome:
        return cls("AA", stored=stored, attached=attached)

    @classmethod
    def of(cls, error: Hl7Error) -> Outcome:
        return cls(error.ack_code, str(error), error.condition, error.location)

    def describe(self) -> str:
        """One line for the log: counts and the reason, nothing of the message."""
        if self.ack_code != "AA":
            return f"{self.ack_code} ({self.reason})"
        waiting = self.stored - self.attached
        return (f"AA ({self.stored} report{'s' * (self.stored != 1)} stored: {self.attached} attached to an indexed "
                f"study, {waiting} waiting for {'its' if waiting == 1 else 'their'} study)")


def ack(header: Header | None, outcome: Outcome, now: datetime | None = None) -> hl7.Message:
    """The ACK of a message whose header is `header` (None: a frame that held no readable header)."""
    header = header or Header()
    component, _, _, subcomponent = header.delimiters[:4]
    request = hl7.parse(header.field.join(
        ["MSH", header.delimiters, *header.sending, *header.receiving, "", "", f"ORU{component}{header.event}",
         header.control_id, header.processing_id, header.version]))
    reply = request.create_ack(outcome.ack_code, application=header.receiving[0] or APPLICATION)
    msh = reply.segments("MSH")[0]
    msh.assign_field((now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z"), 7)
    if not header.event:
        msh.assign_field("ACK", 9)  # not ACK^^ACK
    if outcome.ack_code == "AA":
        return reply
    reason = reply.escape(outcome.reason)
    reply.segments("MSA")[0].assign_field(reason, 3)
    location = outcome.location.replace("^", component)
    condition = subcomponent.join([str(outcome.condition.value), outcome.condition.text, "HL70357"])
    err = reply.create_segment([reply.create_field(["ERR"])])
    for number, value in ((1, component.join([*(location.split(component) + ["", "", ""])[:3], condition])),
                          (2, location), (3, condition.replace(subcomponent, component)), (4, "E"), (8, reason)):
        err.assign_field(value, number)
    reply.append(err)
    return reply


def encode(reply: hl7.Message, codec: str) -> bytes:
    """The ACK's bytes, in the character set of the message it answers."""
    return str(reply).encode(codec, "replace")
