"""Synthetic HL7 v2 ORU^R01 samples (tests/support/oru/*.hl7: invented patients, CR between segments), a way to
change one field of them, and a blocking MLLP client for the listener tests."""

from __future__ import annotations

import socket
from pathlib import Path

ORU_DIR = Path(__file__).parent / "oru"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def sample(name: str) -> str:
    """tests/support/oru/<name>.hl7 as text."""
    return (ORU_DIR / f"{name}.hl7").read_bytes().decode("utf-8")


def with_field(message: str, segment: str, number: int, value: str, occurrence: int = 1) -> str:
    """`message` with field `number` of the `occurrence`-th `segment` set to `value` (MSH-n counts MSH-1 too)."""
    lines = message.split("\r")
    found = [i for i, line in enumerate(lines) if line.startswith(segment + "|")]
    fields = lines[found[occurrence - 1]].split("|")
    index = number - 1 if segment == "MSH" else number  # "MSH|^~\&|..." : MSH-1 is the first "|" itself
    fields += [""] * (index + 1 - len(fields))
    fields[index] = value
    lines[found[occurrence - 1]] = "|".join(fields)
    return "\r".join(lines)


def without_segments(message: str, segment: str) -> str:
    return "\r".join(line for line in message.split("\r") if not line.startswith(segment + "|"))


def frame(message: str | bytes) -> bytes:
    data = message.encode("utf-8") if isinstance(message, str) else message
    return VT + data + FS + CR


def fields(ack: str, segment: str) -> list[str]:
    """The fields of `segment` in an ACK, [segment id, field 1, ...] (MSH: [MSH, MSH-2, MSH-3, ...])."""
    line = next(line for line in ack.split("\r") if line.startswith(segment + "|"))
    return line.split("|")


class MllpClient:
    """One MLLP connection: send a frame, read the framed ACK."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def send(self, message: str | bytes) -> str:
        self.sock.sendall(frame(message))
        return self.read()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> str:
        """The next ACK's text ("" when the listener closed the connection first)."""
        while FS + CR not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return ""
            self.buffer += chunk
        block, self.buffer = self.buffer.split(FS + CR, 1)
        assert block.startswith(VT), block[:20]
        try:
            return block[1:].decode("utf-8")
        except UnicodeDecodeError:  # an ACK in the Latin-1 of the message it answers
            return block[1:].decode("latin-1")

    def closed_by_peer(self) -> bool:
        """The listener closed the connection (EOF or reset) within the socket's timeout."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
