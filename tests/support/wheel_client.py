"""Run by the Python of a fresh venv that holds the client wheel and its dependencies only
(tests/integration/clients/test_python_wheel.py): `python -I wheel_client.py SCENARIO '{json arguments}'`.
Imports nothing but cxr_client and the standard library; prints one JSON line per answer. Scenarios that wait
for the test print "ready" and read a line from stdin before their timed call."""

import json
import sys
import time

import cxr_client

HEAVY = ("numpy", "PIL", "torch", "tritonclient")


def _wait_for_go(client: cxr_client.Client) -> None:
    client.search_options()  # connected and answered
    print("ready", flush=True)
    sys.stdin.readline()


def search(connection: dict, image: str) -> dict:
    """Every kind of call a client team starts with, and the errors it should meet."""
    with cxr_client.Client(**connection) as client:
        text = client.search_text("small left pleural effusion", top_k=5)
        request_id = client.last_request_id
        found = client.search_image(image, top_k=3, group_by_study=True)
        batch = client.batch_search([cxr_client.text_query("cardiomegaly", top_k=2),
                                     cxr_client.image_query(image, top_k=2)])
        study = client.get_study(text.hits[0].study_uid)
        options = client.search_options()
        try:
            client.search_text("effusion", top_k=5000)
        except cxr_client.InvalidArgument as error:
            bad = {"fields": [v.field for v in error.field_violations], "reason": error.reason,
                   "request_id": error.request_id}
    with cxr_client.Client(**dict(connection, token="not-a-token")) as stranger:
        try:
            stranger.search_text("effusion")
        except cxr_client.Unauthenticated as error:
            refused = {"reason": error.reason, "domain": error.domain}
    return {"text_hits": len(text.hits), "request_id": request_id, "image_hits": len(found.hits),
            "batch": [len(r.hits) for r in batch.results], "study_images": len(study.image_ids),
            "model": options.model, "labels": len(options.labels),
            "bad": bad, "refused": refused, "module": cxr_client.__file__,
            "heavy": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}


def burst(connection: dict, calls: int) -> dict:
    """`calls` searches one after another, against a rate limit they exceed."""
    with cxr_client.Client(**connection) as client:
        started = time.monotonic()
        answered = sum(1 for _ in range(calls) if client.search_text("effusion", top_k=1).hits)
        return {"answered": answered, "seconds": time.monotonic() - started}


def restart(connection: dict, timeout: float) -> dict:
    """One call sent while the gateway is down, answered once it is back; then another on the same channel."""
    with cxr_client.Client(**connection, wait_for_ready=True) as client:
        _wait_for_go(client)
        started = time.monotonic()
        hits = len(client.search_text("effusion", top_k=3, timeout=timeout).hits)
        seconds = time.monotonic() - started
        again = len(client.search_text("effusion", top_k=2).hits)
        return {"hits": hits, "seconds": seconds, "again": again}


def deadline(connection: dict, timeout: float) -> dict:
    """One call to a gateway that does not answer: it must fail at its deadline."""
    with cxr_client.Client(**connection) as client:
        _wait_for_go(client)
        started = time.monotonic()
        try:
            client.search_text("effusion", timeout=timeout)
            error = ""
        except cxr_client.CxrError as failed:
            error = type(failed).__name__
        return {"error": error, "seconds": time.monotonic() - started}


if __name__ == "__main__":
    scenario, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"search": search, "burst": burst, "restart": restart, "deadline": deadline}[scenario](
        **arguments)), flush=True)
