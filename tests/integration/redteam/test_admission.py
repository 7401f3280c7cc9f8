"""Red team, admission: floods of refused calls, one call that costs a hundred, one client holding every
slot (issue 17: defects 2, 10, 18). Each test starts a gateway with the limits it tries (the session's
configurations A and B run without a rate limit)."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import httpx
import pytest

from cxr.client import channel
from cxr.dev_pki import dev_security, issue_token
from cxr.retrieval.v1 import retrieval_pb2 as pb
from cxr.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from gateway import audit_log
from support import DATA_DIR, GATEWAY_MODEL
from support.targets import running, secured_settings

pytestmark = pytest.mark.triton
LARGE_JPEG = (DATA_DIR / "cxr_samples" / "covid-19-pneumonia-58-prior.jpg").read_bytes()  # 2373 px, 2.3 MB
FLOOD = 500
MAX_FLOOD = 2_000  # refused calls sent until the address is throttled


@pytest.fixture(scope="module")
def guarded(served, nih_index, tmp_path_factory):
    """Configuration B with the default limits: 50 queries/s, burst 100, 16 calls in flight per client."""
    root = tmp_path_factory.mktemp("guarded")
    with running(secured_settings(served, root, ["search"], rate_limit_per_s=50.0, rate_limit_burst=100)) as target:
        yield target


def _stub(target, ch):
    return pb_grpc.RetrievalStub(ch)


def _channel(target):
    return channel(target.address.replace("127.0.0.1", "localhost"), target.settings.ca, target.settings.client_cert,
                   target.settings.client_key)


def _lines(target) -> list[dict]:
    return [json.loads(line) for line in target.audit_log.read_text().splitlines()]


def test_a_flood_of_unauthenticated_calls_is_throttled_and_summarised_in_the_audit_trail(guarded):
    before = len(_lines(guarded))
    codes = []
    started = time.monotonic()
    with _channel(guarded) as ch:
        stub = _stub(guarded, ch)
        for _ in range(FLOOD):
            try:
                stub.SearchByText(pb.SearchByTextRequest(text="x", model="m" * 5_000), timeout=10)
                codes.append("OK")
            except grpc.RpcError as error:
                codes.append(error.code().name)
    seconds = time.monotonic() - started
    time.sleep(audit_log.THROTTLED_PERIOD_S + 1.5)  # the gateway writes what it left out once a period has passed
    lines = _lines(guarded)[before:]
    refused, throttled = codes.count("UNAUTHENTICATED"), codes.count("RESOURCE_EXHAUSTED")
    assert refused + throttled == FLOOD and throttled >= FLOOD // 2, (refused, throttled, seconds)
    assert refused <= 100 + 50 * seconds + 1  # the burst, then the refill
    summaries = [line for line in lines if line["status"] == "RESOURCE_EXHAUSTED"]
    assert len(summaries) <= seconds / audit_log.THROTTLED_PERIOD_S + 2
    assert len(summaries) + sum(line.get("suppressed", 0) for line in summaries) == throttled  # all on record
    assert not any("m" * 100 in json.dumps(line) for line in lines)  # the model names sent are not in it


def test_only_the_flooding_address_is_throttled(guarded):
    """Refused calls come faster than the bucket refills (50 a second after a burst of 100), so it empties
    within a few hundred of them however slow the machine; the loop stops at the first throttled call."""
    last = None
    with _channel(guarded) as ch:
        stub = _stub(guarded, ch)
        for _ in range(MAX_FLOOD):
            try:
                stub.SearchByText(pb.SearchByTextRequest(text="x"), metadata=(("authorization", "Bearer x"),),
                                  timeout=10)
            except grpc.RpcError as error:
                last = error
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    break
    assert last.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "refused calls" in last.details()
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=guarded.ssl_context())
    with httpx.Client(base_url=guarded.http_url.replace("127.0.0.1", "localhost"), transport=transport,
                      headers={"authorization": f"Bearer {guarded.settings.token}"}, timeout=30) as http:
        answer = http.post("/v1/search/text", json={"text": "effusion", "topK": 2})
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def metered(served, nih_index, tmp_path_factory):
    """Configuration B at 1 query/s with a burst of 100, and two calls in flight per client."""
    root = tmp_path_factory.mktemp("metered")
    settings = dev_security(replace(served, model=GATEWAY_MODEL, rate_limit_per_s=1.0, rate_limit_burst=100,
                                    max_concurrent_rpcs_per_client=2), root / "pki", "alice", ["search"])
    with running(settings, http=False) as target:
        yield target


def _token(target, subject: str) -> str:
    return issue_token(target.settings.ca.parent / "signing.key", subject, ["search"], 600, target.settings.jwt_issuer,
                       target.settings.jwt_audience)


def test_a_batch_costs_a_token_per_query(metered):
    batch = pb.BatchSearchRequest(queries=[pb.SearchQuery(text=pb.SearchByTextRequest(text=f"nodule {i}", top_k=1))
                                           for i in range(150)])
    metadata = (("authorization", f"Bearer {_token(metered, 'batcher')}"),)
    with _channel(metered) as ch:
        stub = _stub(metered, ch)
        assert len(stub.BatchSearch(batch, metadata=metadata, timeout=120).results) == 150  # goes, into debt
        with pytest.raises(grpc.RpcError) as error:
            stub.SearchByText(pb.SearchByTextRequest(text="x"), metadata=metadata, timeout=10)
    retry_ms = int(dict(error.value.trailing_metadata())["retry-after-ms"])
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_ms > 40_000  # ~50 queries of debt


def test_one_client_holds_at_most_its_share_of_slots(metered):
    query = pb.SearchQuery(image=pb.SearchByImageRequest(image=LARGE_JPEG, top_k=1))
    heavy = pb.BatchSearchRequest(queries=[query] * 20)
    alice = (("authorization", f"Bearer {_token(metered, 'alice-' + str(time.time()))}"),)
    bob = (("authorization", f"Bearer {_token(metered, 'bob-' + str(time.time()))}"),)
    with _channel(metered) as ch, ThreadPoolExecutor(2) as pool:
        stub = _stub(metered, ch)
        slow = [pool.submit(stub.BatchSearch, heavy, metadata=alice, timeout=60) for _ in range(2)]
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as error:
            stub.SearchByText(pb.SearchByTextRequest(text="x"), metadata=alice, timeout=10)
        answered_bob = stub.SearchByText(pb.SearchByTextRequest(text="effusion", top_k=2), metadata=bob, timeout=30)
        assert [len(f.result().results) for f in slow] == [20, 20]
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "per client" in error.value.details()
    assert len(answered_bob.hits) == 2
