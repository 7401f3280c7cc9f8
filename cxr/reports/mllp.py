"""`cxr reports listen`: HL7 v2 ORU^R01 from the RIS over MLLP, each message answered with its ACK.

MLLP frames a message as <VT> message <FS><CR>; hl7.mllp reads and writes the frames. Each message is parsed and
handed to the intake in one worker thread, in the order messages arrive: SQLite writes block, and one thread keeps
a correction behind the report it corrects whatever connection each came on. The answer is AA, AE or AR
(cxr.reports.hl7_ack).

Bounded, so that a sender that misbehaves costs little: a frame longer than max_message_bytes is answered AR and
its connection closed, the frame never held whole; a connection silent for read_timeout_s is closed; connections
past max_connections are closed at once. A frame that holds no message is answered AR and the connection reads on.
SIGINT and SIGTERM stop it: no new connections, the messages in hand are answered, then the connections close.

One log line per message: its control id (MSH-10) and the outcome with its reason; never report text, patient ids,
names or accession numbers (an accession number leads to a patient).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import hl7.mllp

from cxr.errors import FailedPreconditionError
from cxr.reports.hl7 import (Condition, FieldRef, Header, Hl7Error, RejectedMessageError, check_header, parse,
                             read_header, read_reports)
from cxr.reports.hl7_ack import Outcome, ack, encode
from cxr.reports.intake import PatientMismatchError, ReportIntake
from cxr.reports.report import InvalidReportError, Report

log = logging.getLogger("cxr.reports.mllp")

MAX_MESSAGE_BYTES = 1 << 20  # a report is a few kB; a frame past this is refused without being held
_CONTROL_ID = re.compile(r"[A-Za-z0-9._:-]{1,40}")


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = MAX_MESSAGE_BYTES
    read_timeout_s: float = 300.0  # a RIS keeps its connection between reports; it reconnects after this silence
    max_connections: int = 16
    stop_grace_s: float = 10.0  # for the messages in hand when asked to stop
    drain_s: float = 2.0  # after refusing a frame: the rest is read and dropped, so that the AR is not lost to a reset


class ListenError(FailedPreconditionError):
    """The listener could not bind its address (another holds the port): choose another, as for the gateway's."""


class MllpListener:
    def __init__(self, intake: ReportIntake, accession_field: str = "OBR-3", limits: Limits = Limits()):
        self.intake = intake
        self.accession = FieldRef.parse(accession_field)
        self.limits = limits
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="hl7-intake")
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task, bool] = {}  # -> busy with a message
        self._stopping = False

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0: a free port); the address bound."""
        try:
            self._server = await hl7.mllp.start_hl7_server(self._connection, host, port,
                                                           limit=self.limits.max_message_bytes)
        except OSError as exc:
            raise ListenError(f"cannot listen for HL7 on {host}:{port}: {exc.strerror or exc}; is another listener "
                              "on that port? choose another with --port") from exc
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        """No new connections; messages in hand are answered (within stop_grace_s); then all is closed."""
        if self._server is None:
            self._worker.shutdown()
            return
        self._stopping = True
        self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=self.limits.stop_grace_s)
        remaining = list(self._connections)
        for task in remaining:
            task.cancel()
        await asyncio.gather(*remaining, return_exceptions=True)
        await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(self._worker, self.intake.ledger.close)
        self._worker.shutdown()
        self._server = None

    def answer(self, frame: bytes | None) -> tuple[bytes, Outcome, str]:
        """One frame's ACK, its outcome and the message's control id as the log may show it (None: a frame that did
        not begin with <VT>). Runs in the worker thread."""
        header, codec = None, "utf-8"
        try:
            if frame is None:
                raise RejectedMessageError("the frame does not begin with <VT> (0x0B): MLLP frames a message as "
                                           "<VT> message <FS><CR>", Condition.SEGMENT_SEQUENCE_ERROR)
            message, syntax = parse(frame)
            header, codec = Header.of(message, syntax), syntax.codec
            check_header(message, syntax)
            outcome = self._store(read_reports(message, syntax, self.accession))
        except Hl7Error as exc:
            outcome = Outcome.of(exc)
            if header is None and frame:
                header, codec = read_header(frame), "latin-1"
        except Exception as exc:  # a failure of ours must cost one message, not the listener
            log.error("HL7 %s: not stored, %s (an internal error)", _shown_id(header), type(exc).__name__)
            outcome = Outcome("AR", "the receiver could not store the report (an internal error, logged there): "
                                    "send the message again later", Condition.APPLICATION_INTERNAL_ERROR)
        try:
            reply = ack(header, outcome)
        except Exception:  # a header python-hl7 cannot build an ACK from: answer as to a frame without one
            reply = ack(None, outcome)
        return encode(reply, codec), outcome, _shown_id(header)

    def _store(self, reports: list[Report]) -> Outcome:
        attached = 0
        for n, report in enumerate(reports, 1):
            try:
                attached += self.intake.accept(report).attached
            except (PatientMismatchError, InvalidReportError) as exc:
                where = f"report {n} of {len(reports)}: " if len(reports) > 1 else ""
                before = "; the reports before it in the message were stored" if n > 1 else ""
                return Outcome("AE", f"{where}{exc}{before}", Condition.APPLICATION_INTERNAL_ERROR
                               if isinstance(exc, PatientMismatchError) else Condition.REQUIRED_FIELD_MISSING,
                               f"OBR^{n}")
        return Outcome.accepted(len(reports), attached)

    async def _connection(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        task = asyncio.current_task()
        if self._stopping or len(self._connections) >= self.limits.max_connections:
            log.warning("refused a connection: %d open, the most allowed", len(self._connections))
            writer.close()
            return
        self._connections[task] = False
        try:
            await self._read(reader, writer, task)
        except ConnectionError:
            log.info("a connection was lost")
        except Exception as exc:  # logged by type: a message of ours or the library's may quote a field
            log.error("a connection failed: %s", type(exc).__name__)
        finally:
            self._connections.pop(task, None)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _read(self, reader, writer, task: asyncio.Task) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                frame = await asyncio.wait_for(reader.readblock(), self.limits.read_timeout_s)
            except TimeoutError:
                log.info("closed a connection silent for %g s", self.limits.read_timeout_s)
                return
            except asyncio.IncompleteReadError:
                return  # the sender closed; a frame it left unfinished is dropped
            except ValueError:  # hl7.mllp: the frame is longer than the reader's limit
                await self._refuse_oversized(reader, writer)
                return
            except hl7.mllp.InvalidBlockError:
                frame = None
            self._connections[task] = True
            try:
                reply, outcome, control_id = await loop.run_in_executor(self._worker, self.answer, frame)
                (log.info if outcome.ack_code == "AA" else log.warning)("HL7 %s: %s", control_id, outcome.describe())
                writer.writeblock(reply)
                await writer.drain()
            finally:
                self._connections[task] = False

    async def _refuse_oversized(self, reader, writer) -> None:
        outcome = Outcome("AR", f"the message is longer than {self.limits.max_message_bytes} bytes, the most "
                                "accepted: the connection is closed", Condition.DATA_TYPE_ERROR)
        log.warning("HL7 -: %s", outcome.describe())
        writer.writeblock(encode(ack(None, outcome), "ascii"))
        await writer.drain()
        writer.write_eof()
        # Closing a socket with unread data resets it, and a reset can overtake the AR: read on for a while, dropping.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.drain_s
        with suppress(TimeoutError, ConnectionError):
            while deadline > loop.time() and await asyncio.wait_for(reader.read(1 << 16), deadline - loop.time()):
                pass


def _shown_id(header: Header | None) -> str:
    """MSH-10 as the log shows it: a plain control id, else a dash."""
    control_id = header.control_id if header else ""
    return control_id if _CONTROL_ID.fullmatch(control_id) else "-"


async def serve(listener: MllpListener, host: str, port: int, ready: Callable[[str, int], None]) -> None:
    """Listen on host:port until SIGINT or SIGTERM, then stop gracefully; `ready(host, port)` once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for number in signals:
        loop.add_signal_handler(number, stop.set)
    try:
        ready(*await listener.start(host, port))
        await stop.wait()
    finally:
        for number in signals:
            loop.remove_signal_handler(number)
        await listener.stop()
