"""A checkout's state as a backup finds it (tests of cxr.backup), in tmp: cxr.toml, a FAISS index with commits,
a PACS build's cache, a report ledger, an audit log with rotated files and its key, and API keys."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report
from cxr.settings import Settings, load_settings
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from gateway import api_keys
from gateway.audit_log import AuditLog
from support import index_metadata, unit_vectors

MODEL, DIM, N = "m", 16, 40
CONFIG = """[cxr]
model = "m"
index_dir = "data/indexes"
audit_log = "data/audit/audit.log"
api_keys_file = "data/secrets/api_keys.json"
audit_max_bytes = 65536
"""


@dataclass
class Stack:
    root: Path
    settings: Settings
    key: str  # an API key in api_keys_file

    @property
    def backend(self) -> FaissBackend:
        return FaissBackend(self.settings.index_dir)

    def search(self, settings: Settings | None = None) -> list[list[str]]:
        """The image ids of the top 10 for a few queries: what a gateway on these settings would answer."""
        store = FaissBackend((settings or self.settings).index_dir).open(MODEL, dim=DIM)
        try:
            hits = store.search(unit_vectors(5, DIM, seed=9), 10)
            return [[row["image_id"] for row in store.rows([i for i, _ in found])] for found in hits]
        finally:
            store.close()

    def audit(self, lines: int, settings: Settings | None = None) -> None:
        settings = settings or self.settings
        log = AuditLog(settings.audit_log, max_bytes=settings.audit_max_bytes)
        try:
            for i in range(lines):
                log.append({"request_id": f"r{i}", "method": "SearchByText", "status": "OK", "pad": "x" * 200})
        finally:
            log.close()


def make_stack(root: Path) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cxr.toml").write_text(CONFIG)
    settings = load_settings(root, {})
    backend = FaissBackend(settings.index_dir)
    backend.write(MODEL, unit_vectors(N, DIM), index_metadata(N), {"model": MODEL, "dim": DIM, "export_sha256": "e1"},
                  [("bad.png", "unreadable")], "flat")
    rows = tuple({"image_id": f"new-{i}", "study_uid": "new-study", "projection": "Frontal", "labels": ["Mass"]}
                 for i in range(3))
    backend.apply(MODEL, Change(unit_vectors(3, DIM, seed=5), rows, export_sha256="e1"))
    backend.apply(MODEL, Change(study_uids=("s1",)))
    cache = settings.index_dir / f"{MODEL}.dicomweb"
    cache.mkdir()
    (cache / "state.json").write_text(json.dumps({"model": MODEL}))
    (cache / "follow.json").write_text(json.dumps({"orthanc_seq": 7}))
    (cache / "listed.jsonl").write_text('["st", "se", "sop1"]\n')
    np.savez(cache / "chunk-000000.npz", sops=np.asarray(["sop1"]), vectors=unit_vectors(1, DIM))
    with ReportLedger(settings.reports_path(MODEL)) as ledger:
        ledger.put(Report(study_instance_uid="s2", patient_id="p2", findings="Heart size normal.",
                          impression="No acute disease.", source="csv"))
    _, key = api_keys.add(settings.api_keys_file, "pacs-router", ["search"])
    stack = Stack(root, settings, key)
    stack.audit(400)  # past audit_max_bytes: rotated files
    return stack
