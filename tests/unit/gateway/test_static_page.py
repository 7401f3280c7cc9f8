"""The search page's own rules, read from its files: server data is never written as HTML, no credential
is kept in localStorage, and nothing runs inline (the Content-Security-Policy forbids it)."""

import re
from pathlib import Path

STATIC = Path(__file__).parents[3] / "gateway" / "static"


def test_the_script_writes_no_html_and_keeps_nothing_in_local_storage():
    script = (STATIC / "app.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)
    assert "localStorage" not in script
    assert "document.cookie" not in script  # the session cookie is HttpOnly: no script has any use for cookies


def test_the_page_has_no_inline_script_style_or_handler():
    page = (STATIC / "index.html").read_text()
    assert all(tag.strip().startswith("<script src=") for tag in re.findall(r"<script[^>]*>", page))
    assert "<style" not in page and not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+=", page)
    assert 'href="/auth/login"' in page  # signing in is a navigation, which connect-src 'self' does not limit
