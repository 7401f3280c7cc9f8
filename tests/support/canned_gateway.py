"""A fake of the gateway's HTTP API for testing one module, the search page (gateway/static/): Playwright's
page.route answers the page's calls with canned JSON, so the page's rendering of answers the real gateway
does not give yet (suggestions, a next page, a refusal) is tested without servers. The static files and
the Content-Security-Policy are the gateway's own."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from gateway.http_api import CSP, STATIC_DIR

ORIGIN = "http://cxr.test"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def hit(rank: int, image_id: str, **fields) -> dict:
    return dict({"rank": rank, "score": 0.9 - rank / 100, "imageId": image_id, "studyUid": f"study-{rank}",
                 "projection": "PA", "labels": ["Effusion"], "findings": f"Findings of result {rank}.",
                 "impression": f"Impression of result {rank}."}, **fields)


class CannedGateway:
    """Routes every request of `page` to ORIGIN: static files from gateway/static, /v1 answers from
    `answers` (path -> a function of the request giving (status, JSON)), thumbnails from `picture`."""

    def __init__(self, page, picture: Path, answers: dict):
        self.requests = []  # (path, method, the request) of every /v1 call, in order
        self.picture = picture.read_bytes()
        self.answers = answers
        page.route(ORIGIN + "/**", self._answer)

    def _answer(self, route):
        request = route.request
        path = urlsplit(request.url).path
        if not path.startswith("/v1/") and not path.startswith("/auth/"):
            name = "index.html" if path == "/" else path.lstrip("/")
            file = STATIC_DIR / name
            if not file.is_file():
                return route.fulfill(status=404, body="not found")
            return route.fulfill(status=200, body=file.read_bytes(), headers={
                "content-type": STATIC_TYPES[file.suffix], "content-security-policy": CSP})
        self.requests.append((path, request.method, request))
        if path == "/auth/session":
            return route.fulfill(status=200, json={"sso": False})
        if path.startswith("/v1/thumbnails/"):
            return route.fulfill(status=200, body=self.picture, headers={"content-type": "image/png"})
        for prefix, answer in self.answers.items():
            if path.startswith(prefix):
                status, body = answer(request)
                return route.fulfill(status=status, body=json.dumps(body),
                                     headers={"content-type": "application/json", "x-request-id": "req-canned"})
        return route.fulfill(status=404, json={"error": {"message": f"no canned answer for {path}"}})

    def calls(self, path: str) -> list:
        return [request for p, _, request in self.requests if p == path]
