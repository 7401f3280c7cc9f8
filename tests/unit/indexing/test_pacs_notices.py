"""indexing.pacs_notices: the listener Orthanc's Lua script posts deletion notices to takes POST
/deletions only, a bounded JSON body of {ResourceType, ID}, the token when one is set, and queues up to
its bound (then 503); a client that stalls is dropped without holding the others; the Orthanc ids of the
listed rows turn notices of any level into the SOP UIDs under them. (Real Orthanc posting to it:
tests/integration/indexing/test_pacs_notices.py.)"""

import http.client
import json
import socket
import threading
import time

import pytest
import requests

import indexing.pacs_notices as pacs_notices
from cxr.dicomweb import orthanc_id
from cxr.errors import FailedPreconditionError, InvalidArgumentError
from indexing.pacs_notices import MAX_BODY, DeletionListener, Notice, OrthancIds, listen_address, parse_notices

ID = orthanc_id("P1", "1.2", "1.2.1", "1.2.1.0")
TOKEN = "s3cret-notices"


def _notice(kind="Instance", oid=ID):
    return {"ResourceType": kind, "ID": oid}


@pytest.fixture
def listener():
    with DeletionListener(token=TOKEN) as server:
        yield server


def _post(listener, body, token=TOKEN, path="/deletions"):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(listener.url.replace("/deletions", path), data=data, headers=headers, timeout=10)


def test_a_notice_is_queued_answered_at_once_and_taken_by_the_follower(listener):
    answer = _post(listener, _notice())
    assert answer.status_code == 200 and answer.json() == {"queued": 1}
    more = [_notice("Study", orthanc_id("P1", "1.2")), _notice("Patient", orthanc_id("P1"))]
    assert _post(listener, more).json() == {"queued": 2}
    assert listener.take(0) == [Notice("Instance", ID), Notice("Study", orthanc_id("P1", "1.2")),
                                Notice("Patient", orthanc_id("P1"))]
    assert listener.take(0) == []


def test_take_waits_for_the_first_notice_up_to_its_timeout(listener):
    started = time.monotonic()
    assert listener.take(0.3) == [] and time.monotonic() - started >= 0.3
    threading.Timer(0.2, _post, (listener, _notice())).start()
    started = time.monotonic()
    assert listener.take(10) == [Notice("Instance", ID)] and time.monotonic() - started < 5


@pytest.mark.parametrize("token, status", [(None, 401), ("wrong", 401), (TOKEN + "x", 401), (TOKEN, 200)])
def test_with_a_token_only_requests_that_bring_it_are_taken(listener, token, status):
    assert _post(listener, _notice(), token=token).status_code == status
    assert len(listener.take(0)) == (status == 200)


def test_without_a_token_any_local_request_is_taken():
    with DeletionListener() as listener:
        assert _post(listener, _notice(), token=None).status_code == 200 and len(listener.take(0)) == 1


@pytest.mark.parametrize("body", [b"not json", b"{}", json.dumps(_notice("Image")).encode(),
                                  json.dumps(_notice(oid="../../etc")).encode(),
                                  json.dumps([_notice(), {"ResourceType": "Instance"}]).encode(), b"[1]"])
def test_a_malformed_notice_is_refused_whole_and_nothing_queued(listener, body):
    answer = _post(listener, body)
    assert answer.status_code == 400 and ("ResourceType" in answer.text or "JSON" in answer.text)
    assert listener.take(0) == []


def test_only_post_to_the_notice_path_is_served(listener):
    assert _post(listener, _notice(), path="/other").status_code == 404
    for method in ("GET", "PUT", "DELETE"):
        answer = requests.request(method, listener.url, timeout=10)
        assert answer.status_code == 405 and answer.headers["Allow"] == "POST"
    assert listener.take(0) == []


def test_a_body_over_the_limit_or_without_a_length_is_refused(listener):
    assert _post(listener, b"[" + b" " * MAX_BODY + b"]").status_code == 413
    host, port = listener._server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.putrequest("POST", "/deletions")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    connection.send(b"0\r\n\r\n")
    assert connection.getresponse().status == 411
    assert listener.take(0) == []


def test_notices_past_the_bound_are_refused_and_counted():
    with DeletionListener(max_pending=2) as listener:
        assert _post(listener, [_notice(), _notice()], token=None).status_code == 200
        answer = _post(listener, _notice(), token=None)
        assert answer.status_code == 503 and listener.refused == 1
        assert len(listener.take(0)) == 2 and _post(listener, _notice(), token=None).status_code == 200


def test_a_client_that_stalls_is_dropped_and_does_not_hold_the_others(monkeypatch):
    monkeypatch.setattr(pacs_notices._Handler, "timeout", 0.5)
    with DeletionListener() as listener:
        host, port = listener._server.server_address[:2]
        stalled = socket.create_connection((host, port))
        stalled.sendall(b"POST /deletions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # and nothing more
        started = time.monotonic()
        assert _post(listener, _notice(), token=None).status_code == 200
        assert time.monotonic() - started < 3
        stalled.close()
        assert listener.take(0) == [Notice("Instance", ID)]


def test_the_address_is_loopback_unless_said_and_elsewhere_needs_a_token():
    assert listen_address("8099") == ("127.0.0.1", 8099) and listen_address(":8099") == ("127.0.0.1", 8099)
    assert listen_address("0.0.0.0:80") == ("0.0.0.0", 80) and listen_address("[::1]:8099") == ("::1", 8099)
    for bad in ("", "host:", "host:99999", "a:b:1"):
        with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
            listen_address(bad)
    with pytest.raises(InvalidArgumentError, match="without a token: set deletion_notices_token"):
        DeletionListener("0.0.0.0", 0)
    with DeletionListener("0.0.0.0", 0, token=TOKEN) as anywhere:
        assert anywhere.url.startswith("http://0.0.0.0:")


def test_a_port_in_use_says_so():
    with DeletionListener() as taken:
        port = taken._server.server_address[1]
        with pytest.raises(FailedPreconditionError, match=f"127.0.0.1:{port}: cannot listen there"):
            DeletionListener.at(str(port))


def _row(sop, series, study="1.2", patient="P1"):
    return {"image_id": sop, "patient_id": patient, "study_instance_uid": study, "series_instance_uid": series,
            "sop_instance_uid": sop}


def test_notices_of_any_level_become_the_sop_uids_listed_under_them():
    ids = OrthancIds()
    rows = {"1.2.1.0": _row("1.2.1.0", "1.2.1"), "1.2.1.1": _row("1.2.1.1", "1.2.1"),
            "1.2.2.0": _row("1.2.2.0", "1.2.2"), "1.3.1.0": _row("1.3.1.0", "1.3.1", study="1.3"),
            "1.4.1.0": _row("1.4.1.0", "1.4.1", study="1.4", patient="1.4")}  # no PatientID: under its study
    for sop, row in rows.items():
        ids.add(sop, row)
    ids.add("1.2.1.0", rows["1.2.1.0"])  # twice: once
    assert len(ids) == 5

    def sops(kind, *uids):
        return ids.sops([Notice(kind, orthanc_id(*uids))])

    assert sops("Instance", "P1", "1.2", "1.2.1", "1.2.1.1") == (["1.2.1.1"], 0)
    assert sops("Series", "P1", "1.2", "1.2.1") == (["1.2.1.0", "1.2.1.1"], 0)
    assert sops("Study", "P1", "1.2") == (["1.2.1.0", "1.2.1.1", "1.2.2.0"], 0)
    assert sops("Patient", "P1") == (["1.2.1.0", "1.2.1.1", "1.2.2.0", "1.3.1.0"], 0)
    assert sops("Instance", "", "1.4", "1.4.1", "1.4.1.0") == (["1.4.1.0"], 0)  # Orthanc hashed an empty PatientID
    assert sops("Patient", "") == (["1.4.1.0"], 0) and sops("Patient", "1.4") == (["1.4.1.0"], 0)
    assert sops("Instance", "P1", "1.2", "1.2.1") == ([], 1)  # a series id given as an instance's: nothing
    assert sops("Patient", "P9") == ([], 1)
    both = ids.sops([Notice("Instance", orthanc_id("P1", "1.2", "1.2.1", "1.2.1.0")),
                     Notice("Series", orthanc_id("P1", "1.2", "1.2.1")), Notice("Study", orthanc_id("P8", "8"))])
    assert both == (["1.2.1.0", "1.2.1.1"], 1)  # each once

    ids.remove("1.2.1.0", rows["1.2.1.0"])
    ids.remove("never-added", _row("never-added", "1.2.1"))
    assert sops("Instance", "P1", "1.2", "1.2.1", "1.2.1.0") == ([], 1)
    assert sops("Series", "P1", "1.2", "1.2.1") == (["1.2.1.1"], 0)
    ids.remove("1.2.1.1", rows["1.2.1.1"])
    assert sops("Series", "P1", "1.2", "1.2.1") == ([], 1) and len(ids) == 3


@pytest.mark.parametrize("body, expected", [
    (json.dumps(_notice()), [Notice("Instance", ID)]),
    (json.dumps([_notice("Series", ID), _notice("Patient", ID)]), [Notice("Series", ID), Notice("Patient", ID)]),
    ("[]", []),
])
def test_parse_notices_takes_one_object_or_a_list(body, expected):
    assert parse_notices(body.encode()) == expected
