"""Issue 21's proof of backup and restore, on real parts: the NIH index (built through the real Triton) with
commits made to it (StoreBackend.apply: a study deleted, an image added) and deletions through the gateway,
reports in the ledger, API keys, and a real gateway with an audit log answering calls. `cxr backup create`
runs while that gateway answers searches; `cxr backup restore` puts the backup into a fresh folder; a gateway
started there answers the same text and image queries with the same hits, the deleted images still gone and
the added one still there, shows the same reports, takes the same API key, and appends to the restored
audit log, whose chain `cxr audit verify` finds intact across the restore."""

import json
import os
import shutil
import threading
import time
from pathlib import Path

import faiss
import grpc
import pytest

from cxr.reports.ledger import ReportLedger
from cxr.reports.report import Report
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from cxr.settings import load_settings
from cxr.store.faiss_backend import FaissBackend
from cxr.store.interface import Change
from cxr_cli.main import main as cxr
from gateway import api_keys
from support import GATEWAY_MODEL, SAMPLE_DICOM, BackgroundGateway

pytestmark = pytest.mark.triton
MODEL = GATEWAY_MODEL
TEXTS = ("cardiomegaly", "left pleural effusion", "no acute cardiopulmonary disease")
TOP_K = 25
# The stack's settings that the test's cxr.toml carries over from the session's Triton (absolute paths).
CARRIED = ("model_repository", "cache_dir", "data_dir", "triton_admin_key_file", "triton_http_port",
           "triton_grpc_port", "triton_metrics_port")
LAYOUT = {"model": MODEL, "index_dir": "indexes", "audit_log": "audit/audit.log",
          "api_keys_file": "secrets/api_keys.json", "run_dir": "run", "auth": "token", "rate_limit_per_s": 0,
          "metrics_port": 0, "http_port": 0, "text_cache_entries": 0, "reports_poll_s": 0.2}


def _toml(values: dict) -> str:
    return "[cxr]\n" + "".join(f"{name} = {json.dumps(v if isinstance(v, (int, float)) else str(v))}\n"
                               for name, v in values.items())


def _until(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class Client:
    """The calls a PACS router with an API key makes, against one gateway."""

    def __init__(self, address: str, key: str):
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 80 << 20)])
        self.stub = pb_grpc.RetrievalStub(self.channel)
        self.metadata = (("authorization", f"Bearer {key}"),)

    def text(self, text: str) -> list[tuple]:
        answer = self.stub.SearchByText(pb.SearchByTextRequest(text=text, top_k=TOP_K), metadata=self.metadata,
                                        timeout=60)
        return [(h.image_id, h.study_uid, round(h.score, 5)) for h in answer.hits]

    def image(self, path) -> list[tuple]:
        answer = self.stub.SearchByImage(pb.SearchByImageRequest(image=path.read_bytes(), top_k=TOP_K),
                                         metadata=self.metadata, timeout=60)
        return [(h.image_id, h.study_uid, round(h.score, 5)) for h in answer.hits]

    def study(self, study_uid: str):
        return self.stub.GetStudy(pb.GetStudyRequest(study_uid=study_uid), metadata=self.metadata, timeout=30)

    def missing(self, study_uid: str) -> bool:
        try:
            self.study(study_uid)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
            return True
        return False

    def answers(self, images) -> dict:
        return {**{t: self.text(t) for t in TEXTS}, **{p.name: self.image(p) for p in images}}

    def close(self):
        self.channel.close()


@pytest.fixture(scope="module")
def site(served, nih_index, tmp_path_factory):
    """A checkout laid out by its cxr.toml: a copy of the NIH index, its ledger, API keys, an audit log."""
    root = tmp_path_factory.mktemp("backup-site")
    shutil.copytree(nih_index, root / "indexes" / MODEL)
    (root / "cxr.toml").write_text(_toml({**{n: getattr(served, n) for n in CARRIED}, **LAYOUT}))
    settings = load_settings(root, {})
    _, key = api_keys.add(settings.api_keys_file, "pacs-router", ["search", "studies", "admin"])
    return root, settings, key


def _images(store) -> list[Path]:
    """Query images: two of the index's own files (the first is image 10, which a commit copies) and a DICOM
    from elsewhere."""
    files = [Path(row["path"]) for row in store.rows([10, 400])]
    assert all(f.is_file() for f in files), files
    return files + [SAMPLE_DICOM]


def _commit(settings, store) -> dict:
    """Commits as a follower makes them: one study deleted, and a copy of image 10's vector added under a new
    study (so an image search with image 10's file finds both)."""
    vector = faiss.read_index(str(settings.index_path(MODEL) / "index.faiss")).reconstruct(10).reshape(1, -1)
    copied, gone = store.rows([10])[0], store.rows([20])[0]
    row = {"image_id": "restore-proof-1", "study_uid": "restore-proof", "projection": copied["projection"],
           "labels": list(copied["labels"])}
    manifest = json.loads((settings.index_path(MODEL) / "manifest.json").read_text())
    FaissBackend(settings.index_dir).apply(MODEL, Change(vector, (row,), study_uids=(gone["study_uid"],),
                                                         export_sha256=manifest["export_sha256"]))
    return {"copied": copied, "gone": gone["study_uid"]}


def _reports(settings, store) -> list[str]:
    studies = [store.rows([i])[0] for i in (30, 31)]
    with ReportLedger(settings.reports_path(MODEL)) as ledger:
        for n, row in enumerate(studies):
            ledger.put(Report(study_instance_uid=row["study_uid"], patient_id=row["patient_id"],
                              findings=f"Finding {n}.", impression=f"Impression {n}.", time="2026-12-03T08:00:00",
                              source="hl7"))
    return [row["study_uid"] for row in studies]


def test_a_restored_gateway_serves_the_same_and_its_audit_chain_runs_on(site, tmp_path, monkeypatch, capsys):
    root, settings, key = site
    for name in [n for n in os.environ if n.startswith("CXR_")]:
        monkeypatch.delenv(name)
    store = FaissBackend(settings.index_dir).open(MODEL)
    images = _images(store)
    committed = _commit(settings, store)
    reported = _reports(settings, store)
    original = BackgroundGateway(settings)
    client = Client(original.address, key)
    try:
        deleted_study = client.text(TEXTS[0])[0][1]
        assert client.stub.DeleteStudy(pb.DeleteStudyRequest(study_uid=deleted_study), metadata=client.metadata,
                                       timeout=60).deleted >= 1
        _until(lambda: not client.missing("restore-proof") and client.missing(committed["gone"]))
        _until(lambda: all(client.study(uid).report_status == "final" for uid in reported))
        before = client.answers(images)
        reports = {uid: (client.study(uid).findings, client.study(uid).impression) for uid in reported}

        searching, searches = threading.Event(), []

        def search_meanwhile():
            while not searching.is_set():
                searches.append(client.text(TEXTS[1]))

        busy = threading.Thread(target=search_meanwhile)
        busy.start()
        monkeypatch.chdir(root)
        try:
            assert cxr(["backup", "create", "--to", str(tmp_path / "backups")]) == 0  # the gateway answering
        finally:
            searching.set()
            busy.join(60)
        said = capsys.readouterr().out
        assert "audit chain: intact" in said and searches, said
        backup = next((tmp_path / "backups").iterdir())
        assert not client.missing("restore-proof")  # the original goes on serving
    finally:
        client.close()
        original.stop()
        store.close()

    fresh = tmp_path / "fresh"
    assert cxr(["backup", "restore", "--from", str(backup), "--to-root", str(fresh)]) == 0
    restored_settings = load_settings(fresh, {})
    assert restored_settings.index_dir == fresh / "indexes" and restored_settings.audit_log.is_file()
    restored = BackgroundGateway(restored_settings)
    client = Client(restored.address, key)  # the same API key: the key file came back
    try:
        _until(lambda: all(client.study(uid).report_status == "final" for uid in reported))
        after = client.answers(images)
        assert after == before
        assert {hit[0] for hit in after[images[0].name][:2]} == {committed["copied"]["image_id"], "restore-proof-1"}
        assert client.missing(deleted_study) and client.missing(committed["gone"])
        assert list(client.study("restore-proof").image_ids) == ["restore-proof-1"]
        assert {uid: (client.study(uid).findings, client.study(uid).impression) for uid in reported} == reports
        assert all(hit[1] not in (deleted_study, committed["gone"]) for hits in after.values() for hit in hits)
    finally:
        client.close()
        restored.stop()

    capsys.readouterr()
    assert cxr(["audit", "verify", str(restored_settings.audit_log)]) == 0
    verified = capsys.readouterr().out
    original_lines = settings.audit_log.read_text().splitlines()
    restored_lines = restored_settings.audit_log.read_text().splitlines()
    copied = sum(1 for _ in (backup / "audit" / "audit.log").read_text().splitlines())
    assert restored_lines[:copied] == original_lines[:copied]  # the restored log is the original's up to the backup
    assert len(restored_lines) > copied and f"intact: {len(restored_lines)} lines" in verified, verified
    assert any(json.loads(line)["method"] == "DeleteStudy" for line in restored_lines[:copied])
    manifest = json.loads((backup / "backup.json").read_text())
    size = sum(f["bytes"] for f in manifest["files"].values()) / 2**20
    print(f"backup of the NIH index ({len(manifest['files'])} files, {size:.1f} MiB) in {manifest['seconds']:.2f} s "
          f"while the gateway answered {len(searches)} searches; {copied} audit lines backed up, "
          f"{len(restored_lines)} verified after the restored gateway's calls")
