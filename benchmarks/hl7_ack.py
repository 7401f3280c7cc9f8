"""How long the RIS waits for its ACK: an ORU^R01 sent to `cxr reports listen` until its AA comes back, on loopback.

  python -m benchmarks.hl7_ack [--messages 200]

Starts `cxr reports listen --port 0` as its own process (a ledger in a temporary folder), then sends synthetic
ORU^R01 reports, each for a new accession number, sequentially after a warm-up: over one kept connection (how an
interface engine sends), and over a new connection per message. The time covers parsing, the labeler, the ledger
write (SQLite, WAL, synchronous=FULL: an fsync per report) and the ACK. Figures go to
benchmarks/results/<date>-<host>-hl7-ack.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import describe, package_version, save
from benchmarks.timing import time_requests

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 300.0
WARMUP = 10
# Synthetic: no real patient. Three text lines, as a RIS sends a short chest X-ray report.
ORU = "\r".join([
    "MSH|^~\\&|BENCH-RIS|BENCH|CXR-RETRIEVAL|BENCH|20250314101502||ORU^R01^ORU_R01|BENCH-{n}|P|2.5.1",
    "PID|1||BENCH-PAT-{n}^^^BENCH^MR||BENCHMARK^PATIENT",
    "ORC|RE||BENCH-ACC-{n}",
    "OBR|1||BENCH-ACC-{n}|36643-5^XR Chest 2 Views^LN|||20250314091000|||||||||||||||20250314101455|||F",
    "OBX|1|TX|&GDT^General Diagnostic Text^DCM||FINDINGS:||||||F",
    "OBX|2|TX|&GDT^General Diagnostic Text^DCM||Small right pleural effusion. Heart size normal.||||||F",
    "OBX|3|TX|&GDT^General Diagnostic Text^DCM||IMPRESSION: Small right pleural effusion.||||||F",
]) + "\r"


class Sender:
    """Sends numbered ORU^R01 messages and waits for each AA."""

    def __init__(self, port: int):
        self.port = port
        self.numbers = itertools.count()
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self) -> None:
        self.sock.sendall(b"\x0b" + ORU.format(n=next(self.numbers)).encode() + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the listener closed the connection")
            reply += chunk
        if b"\rMSA|AA|" not in reply:
            raise RuntimeError(f"not accepted: {reply[:300]!r}")

    def send_on_a_new_connection(self) -> None:
        self.connect()
        self.send()
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def listen(folder: Path, environment: dict | None = None) -> tuple[subprocess.Popen, int]:
    """`cxr reports listen --port 0` as its own process, with its ledger in `folder` (unless `environment`
    says otherwise), and the port it took."""
    env = {**os.environ, "CXR_REPORTS_DIR": str(folder), "PYTHONPATH": str(ROOT), **(environment or {})}
    process = subprocess.Popen([sys.executable, "-m", "cxr_cli", "reports", "listen", "--port", "0"], cwd=folder,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    found = re.search(r"127\.0\.0\.1:(\d+)", process.stdout.readline())
    if not found:
        process.kill()
        raise RuntimeError("`cxr reports listen` did not say where it listens")
    return process, int(found[1])


def run(messages: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="hl7-ack-") as folder:
        process, port = listen(Path(folder))
        try:
            sender = Sender(port)
            sender.connect()
            kept = time_requests(sender.send, messages, TIME_LIMIT_S, WARMUP)
            sender.close()
            fresh = time_requests(sender.send_on_a_new_connection, messages, TIME_LIMIT_S, WARMUP)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    figures = {"kept_connection": kept, "connection_per_message": fresh}
    results = {"machine": {**describe(), "hl7": package_version("hl7")},
               "settings": {"messages": messages, "warmup": WARMUP, "message_bytes": len(ORU.format(n=0)),
                            "labeler": "cxr.reports.labeler",
                            "ledger": f"SQLite WAL, synchronous=FULL, under {tempfile.gettempdir()}"},
               "figures": figures}
    print(json.dumps(figures, indent=2))
    save("hl7-ack", results)
    return results



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200)
    run(parser.parse_args(argv).messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
