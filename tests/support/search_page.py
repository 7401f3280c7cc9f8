"""Driving the search page (gateway/static/) in chromium through Playwright: what the page tests share.
The `browser` and `page` fixtures are in tests/integration/e2e/conftest.py."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's (`make setup-browser`); Playwright's own download is not used
ALL_THUMBNAILS_LOADED = """() => {
  const images = Array.from(document.querySelectorAll('#results .card img'));
  return images.length > 0 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""
ALL_THUMBNAILS_SETTLED = """() => {
  const cards = Array.from(document.querySelectorAll('#results .card'));
  return cards.length > 0 && cards.every((card) => card.querySelector('.thumb.missing')
    || (card.querySelector('img').complete && card.querySelector('img').naturalWidth > 0));
}"""


def search_text(page, text: str) -> None:
    page.get_by_label("Describe the finding").fill(text)
    page.get_by_role("button", name="Search", exact=True).click()


def wait_for_results(page, timeout_s: float = 60, thumbnails: str = ALL_THUMBNAILS_LOADED) -> list:
    """The result cards once the grid is in and every thumbnail has loaded (or, with
    ALL_THUMBNAILS_SETTLED, loaded or given up on)."""
    page.wait_for_selector("#results[aria-busy=false] .card", timeout=timeout_s * 1000)
    page.wait_for_function(thumbnails, timeout=timeout_s * 1000)
    return page.locator("#results .card").all()


def tab_to(page, selector: str, presses: int = 80) -> None:
    """Press Tab until the element matching `selector` has the focus: the keyboard's way there."""
    for _ in range(presses):
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{presses} presses of Tab never reached {selector}")


FOCUS_RING = """() => {
  const style = getComputedStyle(document.activeElement);
  return style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
}"""
CANVAS_REDS = """(id) => {
  const canvas = document.getElementById(id);
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  return Array.from(data.filter((_, i) => i % 4 === 0));
}"""


def windowed(grey: int, width: int, level: int) -> float:
    """What window/level makes of an 8-bit grey: DICOM's linear function (black below the window, white
    above it, linear within), which leaves every grey as it is at width 256, level 128."""
    return min(255.0, max(0.0, ((grey - (level - 0.5)) / (width - 1) + 0.5) * 255))


def assert_windowed(before: list, after: list, width: int, level: int) -> None:
    """`after` is `before` (drawn at the identity window, 256/128) through window/level, within rounding."""
    assert len(before) == len(after) > 0
    worst = max(abs(windowed(b, width, level) - a) for b, a in zip(before, after))
    assert worst <= 1, f"a pixel is {worst} grey levels off window {width} / level {level}"
    assert before != after
