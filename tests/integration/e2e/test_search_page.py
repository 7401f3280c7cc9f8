"""The search page (gateway/static/) in a real browser, against the real gateway, Triton and NIH index.

Playwright drives Debian's chromium (`make setup-browser`; Playwright's own browser download is not
used; the fixtures are in conftest.py). The page searches by text and by a DICOM made from an indexed
PNG, shows the demo banner, loads every thumbnail through fetch() with the bearer token, shows errors,
and asks for a token when the gateway's auth is on (single sign-on: test_search_page_sign_in.py); its
reading view works by keyboard alone, a calibrated index's suggestions are shown as the gateway gives
them, and the gateway takes and acts on the narrowing and refining controls as the page sends them.
CXR_UPDATE_SCREENSHOT=1 also writes docs/search-page.png, reading-view.png and reading-view-dark.png.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from support import DATA_DIR, BackgroundGateway
from support.search_page import CANVAS_REDS, FOCUS_RING, assert_windowed, tab_to
from support.search_page import search_text as _search_text
from support.search_page import wait_for_results as _wait_for_results

pytestmark = pytest.mark.triton
MODEL = "medsiglip-tiny"  # the session's nih_index model: a random-weight twin, so a demo model
QUERY = "small left pleural effusion"
TOP_K = 12
DICOM_ROW = 469  # nih800/labels.csv row of 00000061_008.png, see dicom_of_indexed_png
READING_QUERY = DATA_DIR / "nih800" / "train" / "1_abnormal" / "00000061_008.png"
SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "search-page.png"


def _gateway(settings):
    background = BackgroundGateway(settings, http=True)
    return background, background.http_url.rstrip("/")


@pytest.fixture(scope="module")
def site(served, nih_index):
    """The page's origin: the real gateway with its HTTP API on, auth off."""
    background, url = _gateway(replace(served, model=MODEL))
    try:
        yield url
    finally:
        background.stop()


@pytest.fixture(scope="module")
def dicom_of_indexed_png(tmp_path_factory):
    """An 8-bit MONOCHROME2 DICOM made from one of the indexed NIH PNGs, and that PNG's image id.

    DICOM decoding stretches an image's own grey range to 0..255 and PNG decoding does not, so the
    two decode alike only for a PNG whose range is (nearly) full: 00000061_008.png spans 1..253. The
    random-weight twin scores most images above 0.99 against each other, and a PNG with a narrow
    range (00000032_010.png: 27 grey levels apart once stretched) does not find itself first."""
    from benchmarks.orthanc import nih_images, write_files

    image = replace(nih_images(DATA_DIR, 1, first=DICOM_ROW)[0], monochrome1=False)
    (path,) = write_files([image], tmp_path_factory.mktemp("dicom"))
    return path, image.png.name


def test_text_and_dicom_searches_show_cards_thumbnails_and_the_demo_banner(page, site, dicom_of_indexed_png,
                                                                         tmp_path):
    started = time.monotonic()
    page.goto(site + "/")
    page.get_by_text("Demo model — not for clinical use").wait_for()
    assert page.locator("#model-name").text_content() == MODEL
    assert page.locator("#label-options input[type=checkbox]").count() > 1  # the index's finding labels
    assert page.locator("#projection option").count() >= 2  # "Any view" + the index's projections
    ready_s = time.monotonic() - started

    page.get_by_role("button", name="Search", exact=True).click()  # nothing typed
    assert page.locator("#error").is_visible() and "Type a finding" in page.locator("#error").text_content()

    page.get_by_label("Number of results").select_option(str(TOP_K))
    searched = time.monotonic()
    _search_text(page, QUERY)
    cards = _wait_for_results(page)
    thumbnails_s = time.monotonic() - searched
    assert len(cards) == TOP_K and page.locator("#error").is_hidden()
    assert re.fullmatch(r"\d+ results by text in [\d.]+ s\.", page.locator("#status").text_content())
    first = cards[0]
    assert first.locator(".rank").text_content() == "#1"
    assert re.fullmatch(r"-?\d\.\d{3}", first.locator(".score").text_content())
    assert re.fullmatch(r"Result 1, \w+ view chest X-ray", first.locator("img").get_attribute("alt"))
    scores = [float(card.locator(".score").text_content()) for card in cards]
    assert scores == sorted(scores, reverse=True)
    print(f"\nsearch page: options loaded {ready_s:.2f} s after navigation; "
          f"text search to all {TOP_K} thumbnails loaded {thumbnails_s:.2f} s")

    path, image_id = dicom_of_indexed_png
    searched = time.monotonic()
    page.locator("#image-file").set_input_files(str(path))
    page.wait_for_function("() => /by image/.test(document.getElementById('status').textContent)")
    cards = _wait_for_results(page)
    print(f"search page: DICOM search to thumbnails {time.monotonic() - searched:.2f} s")
    assert cards[0].get_attribute("data-image-id") == image_id
    assert float(cards[0].locator(".score").text_content()) > 0.999

    page.screenshot(path=tmp_path / "search-page.png")
    assert not page.problems, page.problems


def test_a_fresh_page_shows_its_first_thumbnails(page, site, tmp_path):
    """Navigation to a query's thumbnails, as a clinician opening the page and searching at once."""
    started = time.monotonic()
    page.goto(site + "/")
    page.wait_for_function("() => performance.getEntriesByName('cxr:options').length > 0")
    _search_text(page, QUERY)
    _wait_for_results(page)
    elapsed = time.monotonic() - started
    in_page = page.evaluate("() => performance.getEntriesByName('cxr:thumbnails')[0].startTime")
    print(f"\nsearch page: navigation to first thumbnails {elapsed:.2f} s (in-page clock {in_page / 1000:.2f} s)")
    page.screenshot(path=tmp_path / "search-page.png")
    if os.environ.get("CXR_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "search-page.png", SCREENSHOT)
    assert not page.problems, page.problems


def test_filters_find_similar_and_a_narrow_window(page, site):
    page.goto(site + "/")
    page.get_by_label("Number of results").select_option("24")
    page.locator("#filters summary").click()
    page.get_by_label("Effusion", exact=True).check()
    page.get_by_label("One result per study").check()
    _search_text(page, QUERY)
    cards = _wait_for_results(page)
    assert 0 < len(cards) <= 24
    assert all("Effusion" in card.locator(".tags").inner_text() for card in cards)

    chosen = cards[1].get_attribute("data-image-id")
    with page.expect_request(lambda r: r.url.endswith("/v1/search/image")) as sent:
        cards[1].get_by_role("button", name="Find similar to result 2").click()
    assert chosen not in sent.value.url  # the id goes in the form (test_search_page_rendering.py reads it there)
    page.wait_for_function("() => /results by image/.test(document.getElementById('status').textContent)")
    assert _wait_for_results(page)[0].get_attribute("data-image-id") == chosen
    page.set_viewport_size({"width": 420, "height": 800})  # a phone held upright: one column, no sideways scroll
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert not page.problems, page.problems


def test_the_reading_view_works_with_the_keyboard_only(page, site, tmp_path):
    """A PNG query beside its results, window/level and the report by keyboard; screenshots light and dark."""
    page.goto(site + "/")
    page.wait_for_function("() => performance.getEntriesByName('cxr:options').length > 0")
    page.locator("#image-file").set_input_files(str(READING_QUERY))
    page.wait_for_function("() => /by image/.test(document.getElementById('status').textContent)")
    _wait_for_results(page)
    # This index has no calibration (so no suggestions); it holds more than a page (so a next page).
    assert page.locator("#suggestions").is_hidden() and page.get_by_role("button", name="Next page").is_visible()

    page.locator("#query").focus()
    tab_to(page, "button.read[aria-label='Reading view of result 2']")
    assert page.evaluate(FOCUS_RING)
    page.keyboard.press("Enter")
    page.get_by_role("dialog", name="Reading view").wait_for()
    page.wait_for_function("""() => ['query-canvas', 'result-canvas'].every((id) =>
      document.getElementById(id).dataset.window === '256' && !document.getElementById(id).hidden)""")
    assert page.evaluate("() => document.activeElement.id") == "result-canvas" and page.evaluate(FOCUS_RING)
    # GetThumbnail at its largest (512), which never enlarges (the NIH sample is 64 px): the page enlarges it.
    assert 0 < page.evaluate("() => document.getElementById('result-canvas').width") <= 512
    assert page.locator("#result-canvas").bounding_box()["width"] >= 400
    assert page.locator("#result-caption").text_content().startswith("Result 2")
    report = page.locator("#reading-report")
    assert report.locator("dl").text_content()  # the hit's facts at once (NIH: no report text)

    before = {view: page.evaluate(CANVAS_REDS, view) for view in ("query-canvas", "result-canvas")}
    for key in ("Shift+ArrowLeft", "ArrowLeft", "ArrowUp", "ArrowUp"):  # narrower, higher: more contrast
        page.keyboard.press(key)
    page.wait_for_function("() => document.getElementById('wl-readout').textContent === 'Window 176 · Level 144'")
    for view in before:  # both panes follow the one window
        assert_windowed(before[view], page.evaluate(CANVAS_REDS, view), 176, 144)
    page.screenshot(path=tmp_path / "reading-view.png")

    tab_to(page, "#wl-reset")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('wl-readout').textContent === 'Window 256 · Level 128'")
    tab_to(page, "#reading-report")
    assert page.evaluate(FOCUS_RING)
    page.keyboard.press("Escape")
    page.get_by_role("dialog", name="Reading view").wait_for(state="hidden")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Reading view of result 2"

    page.emulate_media(color_scheme="dark")  # no choice made in this tab: the page follows the system
    page.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('result-canvas').dataset.window === '256'")
    for key in ("ArrowLeft", "ArrowLeft", "ArrowUp"):
        page.keyboard.press(key)
    page.wait_for_function("() => document.getElementById('wl-readout').textContent === 'Window 224 · Level 136'")
    page.screenshot(path=tmp_path / "reading-view-dark.png")
    if os.environ.get("CXR_UPDATE_SCREENSHOT"):
        for name in ("reading-view.png", "reading-view-dark.png"):
            shutil.copyfile(tmp_path / name, SCREENSHOT.parent / name)
    assert not page.problems, page.problems


def _answered(page, site, path, act):
    """Does `act` and returns the gateway's answer to the page's call of `path`, once the page has shown it."""
    with page.expect_response(lambda r: r.url == site + path) as answered:
        act()
    page.wait_for_function("() => document.getElementById('results').getAttribute('aria-busy') === 'false'")
    return answered.value


def test_the_page_narrows_and_refines_a_search_that_the_real_gateway_serves(page, site, dicom_of_indexed_png):
    """Each control of issue 22 as the page sends it, taken and acted on by the real gateway."""
    path, png_name = dicom_of_indexed_png
    with open(DATA_DIR / "nih800" / "labels.csv", newline="") as rows:
        patients = {row["image_index"]: row["patient_id"] for row in csv.DictReader(rows)}
    page.goto(site + "/")
    page.wait_for_function("() => performance.getEntriesByName('cxr:options').length > 0")
    page.get_by_label("Number of results").select_option(str(TOP_K))

    page.get_by_label("Exclude this patient").check()
    assert _answered(page, site, "/v1/search/image", lambda: page.locator("#image-file").set_input_files(str(path))).ok
    ids = [card.get_attribute("data-image-id") for card in _wait_for_results(page)]
    assert len(ids) == TOP_K and patients[png_name] not in {patients[i] for i in ids}  # 00000061 has 20+ images here
    page.locator("#region-note").wait_for()  # the browser cannot draw a DICOM: its region is typed

    refused = _answered(page, site, "/v1/search/image",
                        lambda: page.locator("#image-file").set_input_files(str(READING_QUERY)))
    assert refused.status == 400  # a PNG has no patient: the gateway says so, the page shows it
    assert "exclude_same_patient" in page.locator("#error").text_content().lower()
    page.get_by_label("Exclude this patient").uncheck()

    page.get_by_label("With words").fill("effusion")
    assert _answered(page, site, "/v1/search/image",
                     lambda: page.locator("#image-file").set_input_files(str(READING_QUERY))).ok
    for name, value in (("Left", "25"), ("Top", "25"), ("Width", "50"), ("Height", "50")):
        page.get_by_label(name).fill(value)
    region = _answered(page, site, "/v1/search/image",
                       lambda: page.get_by_role("button", name="Search this region").click())
    assert region.ok and len(_wait_for_results(page)) == TOP_K and page.locator("#error").is_hidden()

    cards = _wait_for_results(page)
    cards[0].get_by_role("button", name="Relevant, result 1", exact=True).click()
    cards[1].get_by_role("button", name="Not relevant, result 2", exact=True).click()
    refined = _answered(page, site, "/v1/search/image",
                        lambda: page.get_by_role("button", name="Refine with my marks").click())
    assert refined.ok and page.locator("#status").text_content().endswith("Round 1 of feedback.")

    page.get_by_label("Without words").fill("pacemaker")
    assert _answered(page, site, "/v1/search/text", lambda: _search_text(page, QUERY)).ok
    assert len(_wait_for_results(page)) == TOP_K
    page.get_by_label("From").fill("2001-01-01")  # the NIH sample has no study dates: nothing is dated within
    assert _answered(page, site, "/v1/search/text", lambda: _search_text(page, QUERY)).ok
    assert page.locator("#status").text_content() == "No matching images by text. Try fewer filters."
    assert not [p for p in page.problems if "400" not in p], page.problems


@pytest.fixture(scope="module")
def calibrated_site(served, nih_index, tmp_path_factory):
    """The gateway over a copy of the NIH index calibrated by `cxr index calibrate`: image queries get suggestions."""
    from cxr_cli.index_commands import cmd_index_calibrate
    from cxr_cli.main import build_parser

    settings = replace(served, model=MODEL, index_dir=tmp_path_factory.mktemp("calibrated"))
    shutil.copytree(nih_index, settings.index_path(MODEL))
    args = build_parser().parse_args(["index", "calibrate", "--model", MODEL,
                                      "--labels-csv", str(DATA_DIR / "nih800" / "labels.csv")])
    assert cmd_index_calibrate(args, settings) == 0
    background, url = _gateway(settings)
    try:
        yield url
    finally:
        background.stop()


def test_the_suggestions_of_a_calibrated_index_are_shown_as_the_gateway_gives_them(page, calibrated_site):
    from cxr.suggestions import K_GRID

    page.goto(calibrated_site + "/")
    page.wait_for_function("() => performance.getEntriesByName('cxr:options').length > 0")
    with page.expect_response(lambda r: r.url.endswith("/v1/search/image")) as answered:
        page.locator("#image-file").set_input_files(str(READING_QUERY))
    given = answered.value.json()["suggestions"]
    _wait_for_results(page)
    panel = page.locator("#suggestions")
    assert given and panel.is_visible()
    assert panel.get_by_role("heading").text_content() == "Similar cases carry…"
    shown = panel.locator("li").all_text_contents()
    assert len(shown) == len(given)
    for text, suggestion in zip(shown, given):
        m = re.fullmatch(r"(.+) (<1|\d{1,3}) % · (\d+) similar cases?", text)
        assert m and m.group(1) == suggestion["label"], text
        assert m.group(2) == "<1" or abs(int(m.group(2)) - 100 * suggestion["probability"]) <= 0.5
        assert 1 <= int(m.group(3)) == suggestion.get("neighbours", 0) <= max(K_GRID)
    assert "not a diagnosis" in panel.text_content()

    _search_text(page, QUERY)  # a text query has no neighbours' vote: the panel goes
    page.wait_for_function("() => /results by text/.test(document.getElementById('status').textContent)")
    assert panel.is_hidden()
    assert not page.problems, page.problems


@pytest.fixture(scope="module")
def secured_site(served, nih_index, tmp_path_factory):
    """The gateway with auth = "token" (JWTs from the development PKI), its HTTP API on loopback."""
    from cxr import dev_pki

    pki = tmp_path_factory.mktemp("pki")
    dev_pki.write_dev_pki(pki)
    settings = replace(served, model=MODEL, auth="token", jwt_jwks=str(pki / dev_pki.JWKS_FILE),
                       jwt_issuer="cxr-dev", jwt_audience="cxr-retrieval", rate_limit_per_s=0)
    token = dev_pki.issue_token(pki / dev_pki.SIGNING_KEY, "dr.page", ["search", "studies"], 600,
                                settings.jwt_issuer, settings.jwt_audience)
    background, url = _gateway(settings)
    try:
        yield url, token
    finally:
        background.stop()


def test_with_auth_on_the_page_asks_for_a_token_and_works_with_it(page, secured_site):
    url, token = secured_site
    page.goto(url + "/")
    token_field = page.get_by_label("Access token", exact=True)
    token_field.wait_for()  # the options call was refused: the page asks
    assert page.locator("#error").is_visible()
    assert "access token" in page.locator("#error").text_content()

    token_field.fill("not-a-token")
    token_field.press("Enter")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('access token')")
    assert token_field.is_visible()

    token_field.fill(token)
    page.get_by_role("button", name="Use token").click()
    page.get_by_text("Demo model — not for clinical use").wait_for()
    assert page.locator("#token-form").is_hidden()
    _search_text(page, QUERY)
    assert len(_wait_for_results(page)) == TOP_K  # thumbnails too went with the token
    storage = page.evaluate("() => [sessionStorage.getItem('cxr.token'), localStorage.length, location.href]")
    assert storage[0] == token and storage[1] == 0 and token not in storage[2]
    problems = [p for p in page.problems if "401" not in p]  # the refused calls before the token are expected
    assert not problems, problems

