"""The search page's rendering of answers, against a canned fake of the gateway's HTTP API
(support.canned_gateway: Playwright routes the page's calls; no servers). It covers answers the real
gateway's test cannot make at will: a next page (next_page_token / page_token), suggestions with markup in
a label ("Similar cases carry…"), and "Find similar" (a search by image_id) refused; the reading view, the
report panel and the dark theme, by keyboard only; and the request each search control makes (study dates,
exclusions, words, relevance feedback rounds, a region), captured and compared field by field. test_search_page.py runs the
reading view and the suggestions against the real gateway."""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import default

import pytest

from support import DATA_DIR
from support.canned_gateway import ORIGIN, CannedGateway, hit
from support.search_page import (ALL_THUMBNAILS_LOADED, CANVAS_REDS, FOCUS_RING, assert_windowed, search_text,
                                 tab_to, wait_for_results)

PICTURE = DATA_DIR / "cxr_samples" / "00000001_000.png"
OPTIONS = {"model": "canned-model", "labels": ["Effusion", "Cardiomegaly"], "projections": ["PA", "AP"],
           "indexSize": 3}
MARKUP = '<img src=x onerror="window.injected=1">'  # server text that must stay text


def _options(request):
    return 200, OPTIONS


def _text_search(request):
    body = json.loads(request.post_data)
    if body.get("pageToken") == "page-2":
        return 200, {"model": "canned-model", "hits": [hit(4, "d.png"), hit(5, "e.png")]}
    if "feedback" in body:  # moved by the marks: other neighbours
        return 200, {"model": "canned-model", "hits": [hit(1, "a.png"), hit(2, "d.png"), hit(3, "e.png")]}
    return 200, {"model": "canned-model", "hits": [hit(1, "a.png", labels=[MARKUP]), hit(2, "b.png"), hit(3, "c.png")],
                 "suggestions": [{"label": "Effusion", "probability": 0.625, "neighbours": 7},
                                 {"label": MARKUP, "probability": 0.004, "neighbours": 1}],
                 "nextPageToken": "page-2"}


def _refused(request):
    return 400, {"error": {"message": "unknown parameter 'image_id': /v1/search/image takes [...]",
                           "requestId": "req-refused"}}


def _form(request) -> list[tuple[str, str]]:
    """The fields of a multipart image search, in order, without its file part."""
    head = b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
    message = BytesParser(policy=default).parsebytes(head + request.post_data_buffer)
    return [(part.get_param("name", header="content-disposition"), part.get_content())
            for part in message.iter_parts() if part.get_filename() is None]


def _image_search(request):
    """Refuses an exclusion as the gateway does for a PNG (no patient); answers anything else."""
    if "exclude_same_patient" in dict(_form(request)):
        return 400, {"error": {"message": "exclude_same_patient: a PNG or JPEG query has no patient; "
                                          "search with a DICOM file or an archived image", "requestId": "req-png"}}
    return 200, {"model": "canned-model", "hits": [hit(1, "a.png"), hit(2, "b.png")]}


SETTINGS = [("top_k", "12"), ("model", ""), ("group_by_study", "false")]  # what every image search sends


def _wait_for_window(page, readout: str) -> None:
    page.wait_for_function("(text) => document.getElementById('wl-readout').textContent === text", arg=readout,
                           timeout=5000)


@pytest.fixture
def canned(page):
    if not PICTURE.is_file():
        pytest.skip(f"{PICTURE} is missing: the shared sample data")
    gateway = CannedGateway(page, PICTURE, {"/v1/search/options": _options, "/v1/search/text": _text_search,
                                            "/v1/search/image": _refused,
                                            "/v1/studies/": lambda request: (200, {
                                                "labels": ["Effusion"], "imageIds": ["a.png"],
                                                "findings": "The whole findings.", "impression": "The whole impression."})})
    page.goto(ORIGIN + "/")
    page.wait_for_function("() => performance.getEntriesByName('cxr:options').length > 0")
    return gateway


def test_suggestions_and_pages_appear_only_when_the_answer_has_them(page, canned):
    search_text(page, "effusion")
    wait_for_results(page)
    panel = page.locator("#suggestions")
    assert panel.is_visible()
    assert panel.get_by_role("heading").text_content() == "Similar cases carry…"
    items = panel.locator("li").all_text_contents()
    assert items[0] == "Effusion 63 % · 7 similar cases"  # 0.625 as a whole percentage
    assert items[1] == MARKUP + " <1 % · 1 similar case"  # server text shown as text, never parsed
    assert "not a diagnosis" in panel.text_content()
    assert page.evaluate("() => window.injected") is None and page.locator("#results img[src=x]").count() == 0

    assert page.get_by_role("button", name="Previous page").is_hidden()
    page.get_by_role("button", name="Next page").click()
    page.wait_for_function("() => document.getElementById('status').textContent.endsWith('Page 2.')")
    cards = wait_for_results(page)
    assert [card.locator(".rank").text_content() for card in cards] == ["#4", "#5"]
    assert json.loads(canned.calls("/v1/search/text")[-1].post_data)["pageToken"] == "page-2"
    assert page.get_by_role("button", name="Next page").is_hidden()  # the last page: no token
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Reading view of result 4"
    assert panel.is_hidden()  # the second page's answer carries no suggestions

    page.get_by_role("button", name="Previous page").click()
    page.wait_for_function("() => !document.getElementById('status').textContent.includes('Page')")
    assert "pageToken" not in json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert page.get_by_role("button", name="Next page").is_visible()
    assert not page.problems, page.problems


def test_find_similar_sends_the_image_id_in_the_form_and_shows_a_refusal_cleanly(page, canned):
    search_text(page, "effusion")
    cards = wait_for_results(page)
    cards[1].get_by_role("button", name="Find similar to result 2").click()
    error = page.locator("#error")
    error.wait_for()
    assert error.text_content() == ("Unknown parameter 'image_id': /v1/search/image takes [...] "
                                    "Request id: req-refused.")
    (request,) = canned.calls("/v1/search/image")
    assert "b.png" not in request.url  # the image id goes in the form, never a URL
    assert 'name="image_id"\r\n\r\nb.png' in request.post_data
    assert len(page.locator("#results .card").all()) == 3  # the last answered search stays on screen
    assert page.locator("#pager").is_visible()  # and its pages still work
    assert not [p for p in page.problems if "400" not in p], page.problems


def test_the_reading_view_and_the_report_panel_work_with_the_keyboard_only(page, canned):
    search_text(page, "effusion")
    wait_for_results(page, thumbnails=ALL_THUMBNAILS_LOADED)
    page.locator("#query").focus()  # where the search left the keyboard

    tab_to(page, "button.read[aria-label='Reading view of result 1']")
    assert page.evaluate(FOCUS_RING)
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Reading view")
    dialog.wait_for()
    page.wait_for_function("() => document.getElementById('result-canvas').dataset.window === '256'")
    assert page.evaluate("() => document.activeElement.id") == "result-canvas"
    assert page.evaluate(FOCUS_RING)
    assert page.locator("#query-note").text_content() == "A text query: “effusion”. No query image to compare."
    page.wait_for_function("() => document.getElementById('reading-text').textContent.includes('The whole')")

    before = page.evaluate(CANVAS_REDS, "result-canvas")
    page.keyboard.press("ArrowUp")  # a higher level: darker
    page.keyboard.press("Shift+ArrowLeft")  # a narrower window: more contrast
    _wait_for_window(page, "Window 192 · Level 136")  # drawn in the next animation frame
    assert_windowed(before, page.evaluate(CANVAS_REDS, "result-canvas"), 192, 136)

    tab_to(page, "#wl-reset")  # the visible reset, by the keyboard
    assert page.evaluate(FOCUS_RING)
    page.keyboard.press("Enter")
    _wait_for_window(page, "Window 256 · Level 128")
    assert page.evaluate(CANVAS_REDS, "result-canvas") == before

    tab_to(page, "#reading-next")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('result-caption').textContent.startsWith('Result 2')")
    tab_to(page, "#reading-report")  # the whole report, reachable and scrollable by the keyboard
    assert page.evaluate(FOCUS_RING)
    assert "The whole impression." in page.locator("#reading-report").text_content()

    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == "Reading view of result 1"
    assert page.locator("#reading-text").text_content() == ""  # a closed view keeps no report text

    tab_to(page, "button.open-study[aria-label='Full report of result 1']")
    page.keyboard.press("Enter")
    panel = page.locator("#results .card").first.locator(".study")
    panel.wait_for()
    assert page.evaluate("() => document.activeElement.classList.contains('study')")
    assert page.evaluate(FOCUS_RING)
    assert "The whole findings." in panel.text_content()
    page.keyboard.press("Escape")
    assert panel.is_hidden()
    assert page.evaluate("() => document.activeElement.getAttribute('aria-expanded')") == "false"
    assert not page.problems, page.problems


def test_window_and_level_follow_a_mouse_drag(page, canned):
    search_text(page, "effusion")
    cards = wait_for_results(page)
    cards[0].get_by_role("button", name="Reading view of result 1").click()
    page.wait_for_function("() => document.getElementById('result-canvas').dataset.window === '256'")
    box = page.locator("#result-canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 100, y + 40, steps=5)  # left: narrower; down: higher level
    page.mouse.up()
    _wait_for_window(page, "Window 156 · Level 168")
    page.get_by_role("button", name="Reset window").click()
    _wait_for_window(page, "Window 256 · Level 128")
    assert not page.problems, page.problems


def test_the_dark_theme_follows_the_system_and_the_toggle_for_this_tab_only(browser):
    context = browser.new_context(color_scheme="dark")
    page = context.new_page()
    try:
        CannedGateway(page, PICTURE, {"/v1/search/options": _options})
        page.goto(ORIGIN + "/")
        toggle = page.get_by_role("button", name="Dark theme")
        page.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
        assert toggle.get_attribute("aria-pressed") == "true"
        dark = page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
        toggle.focus()
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.documentElement.dataset.theme") == "light"
        assert page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor") != dark
        page.reload()  # the choice holds for the tab, in sessionStorage only
        page.wait_for_function("() => document.documentElement.dataset.theme === 'light'")
        assert page.evaluate("() => [sessionStorage.getItem('cxr.theme'), localStorage.length]") == ["light", 0]
    finally:
        context.close()


def test_a_study_date_range_goes_into_a_text_search_as_dicom_dates(page, canned):
    page.get_by_label("From").fill("2024-01-31")
    page.get_by_label("to", exact=True).fill("2024-12-01")
    search_text(page, "effusion")
    wait_for_results(page)
    body = json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert body["filters"] == {"labels": [], "projections": [], "studyDateFrom": "20240131", "studyDateTo": "20241201"}
    page.get_by_label("From").fill("")
    with page.expect_request(ORIGIN + "/v1/search/text") as request:
        search_text(page, "effusion")
    assert json.loads(request.value.post_data)["filters"] == {"labels": [], "projections": [], "studyDateTo": "20241201"}
    assert not page.problems, page.problems


def test_exclusions_and_dates_go_into_an_image_search_as_form_fields_and_a_refusal_shows_cleanly(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    page.get_by_label("Exclude this patient").check()
    page.get_by_label("Exclude this study").check()
    page.get_by_label("From").fill("2020-02-29")
    page.get_by_label("to", exact=True).fill("2021-03-01")
    page.set_input_files("#image-file", PICTURE)
    error = page.locator("#error")
    error.wait_for()
    assert error.text_content() == ("Exclude_same_patient: a PNG or JPEG query has no patient; search with a DICOM "
                                    "file or an archived image Request id: req-png.")
    (request,) = canned.calls("/v1/search/image")
    assert _form(request) == SETTINGS + [("study_date_from", "20200229"), ("study_date_to", "20210301"),
                                         ("exclude_same_patient", "true"), ("exclude_same_study", "true")]
    assert page.locator("#results .card").count() == 0

    page.get_by_label("Exclude this patient").uncheck()  # by keyboard too: a labelled checkbox
    page.get_by_label("From").fill("")
    page.get_by_label("to", exact=True).fill("")
    page.set_input_files("#image-file", PICTURE)
    wait_for_results(page)
    assert error.is_hidden()
    assert _form(canned.calls("/v1/search/image")[-1]) == SETTINGS + [("exclude_same_study", "true")]

    page.get_by_label("Exclude this study").uncheck()
    page.get_by_label("Exclude this patient").focus()
    page.keyboard.press("Space")
    page.locator("#results .card").first.get_by_role("button", name="Find similar to result 1").click()
    page.locator("#error").wait_for()  # an archived image too: the gateway, not the page, judges
    assert _form(canned.calls("/v1/search/image")[-1]) == SETTINGS + [("exclude_same_patient", "true"),
                                                                      ("image_id", "a.png")]
    assert not [p for p in page.problems if "400" not in p], page.problems


def _state(page) -> str:
    return page.locator("#refine-state").text_content()


def test_marks_refine_a_text_search_cumulatively_round_by_round_and_a_new_query_clears_them(page, canned):
    search_text(page, "effusion")
    cards = wait_for_results(page)
    refine = page.get_by_role("button", name="Refine with my marks")
    assert refine.is_disabled() and _state(page) == "Mark results Relevant or Not relevant, then refine."
    relevant = cards[0].get_by_role("button", name="Relevant, result 1", exact=True)
    relevant.focus()  # by keyboard
    page.keyboard.press("Enter")
    assert relevant.get_attribute("aria-pressed") == "true"
    assert page.evaluate(FOCUS_RING)
    cards[1].get_by_role("button", name="Relevant, result 2", exact=True).click()
    cards[1].get_by_role("button", name="Not relevant, result 2", exact=True).click()  # switches the mark
    assert cards[1].get_by_role("button", name="Relevant, result 2", exact=True).get_attribute("aria-pressed") == "false"
    cards[2].get_by_role("button", name="Relevant, result 3", exact=True).click()
    cards[2].get_by_role("button", name="Relevant, result 3", exact=True).click()  # and unmarks
    assert _state(page) == "1 relevant, 1 not relevant marked."
    first = json.loads(canned.calls("/v1/search/text")[-1].post_data)

    refine.click()
    page.wait_for_function("() => document.getElementById('status').textContent.endsWith('Round 1 of feedback.')")
    cards = wait_for_results(page)
    body = json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert body == dict(first, feedback={"relevantImageIds": ["a.png"], "notRelevantImageIds": ["b.png"]})
    assert _state(page) == "Round 1 of feedback. 1 relevant, 1 not relevant marked."
    assert cards[0].get_by_role("button", name="Relevant, result 1", exact=True).get_attribute("aria-pressed") == "true"
    assert cards[1].get_by_role("button", name="Relevant, result 2", exact=True).get_attribute("aria-pressed") == "false"

    cards[1].get_by_role("button", name="Relevant, result 2", exact=True).click()  # d.png, new in this round
    refine.click()
    page.wait_for_function("() => document.getElementById('status').textContent.endsWith('Round 2 of feedback.')")
    body = json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert body["feedback"] == {"relevantImageIds": ["a.png", "d.png"], "notRelevantImageIds": ["b.png"]}
    assert _state(page) == "Round 2 of feedback. 2 relevant, 1 not relevant marked."
    assert page.url == ORIGIN + "/"  # marks are in the page's memory only
    assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [0, 0]

    search_text(page, "effusion")  # a new query: no marks
    page.wait_for_function("() => !document.getElementById('status').textContent.includes('Round')")
    wait_for_results(page)
    assert "feedback" not in json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert refine.is_disabled() and _state(page) == "Mark results Relevant or Not relevant, then refine."
    assert page.locator("#results button.mark[aria-pressed=true]").count() == 0
    assert not page.problems, page.problems


def test_marks_refine_an_image_search_as_repeated_form_fields_with_the_same_upload(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    page.get_by_label("Exclude this study").check()
    page.set_input_files("#image-file", PICTURE)
    cards = wait_for_results(page)
    cards[0].get_by_role("button", name="Not relevant, result 1", exact=True).click()
    cards[1].get_by_role("button", name="Relevant, result 2", exact=True).click()
    page.get_by_role("button", name="Refine with my marks").click()
    page.wait_for_function("() => document.getElementById('status').textContent.endsWith('Round 1 of feedback.')")
    first, refined = canned.calls("/v1/search/image")
    assert _form(refined) == _form(first) + [("relevant_image_id", "b.png"), ("not_relevant_image_id", "a.png")]
    assert _form(first) == SETTINGS + [("exclude_same_study", "true")]
    # The same upload again (Chromium's interception shows a file part's name, not its bytes).
    assert 'name="image"; filename="00000001_000.png"' in refined.post_data
    assert not page.problems, page.problems


def test_words_modify_a_text_search_without_and_an_image_search_with(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    page.get_by_label("Without words").fill("  pacemaker ")
    page.get_by_label("With words").fill("effusion")
    search_text(page, "cardiomegaly")
    wait_for_results(page)
    body = json.loads(canned.calls("/v1/search/text")[-1].post_data)
    assert body["text"] == "cardiomegaly" and body["excludeText"] == "pacemaker"
    assert "withText" not in body and "with_text" not in body  # an image search's words only

    page.set_input_files("#image-file", PICTURE)
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('2 results')")
    assert _form(canned.calls("/v1/search/image")[-1]) == SETTINGS + [("with_text", "effusion")]

    with page.expect_request(ORIGIN + "/v1/search/image") as similar:
        page.locator("#results .card").first.get_by_role("button", name="Find similar to result 1").click()
    assert _form(similar.value) == SETTINGS + [("with_text", "effusion"), ("image_id", "a.png")]

    page.get_by_label("Without words").fill("")
    with page.expect_request(ORIGIN + "/v1/search/text") as plain:
        search_text(page, "cardiomegaly")
    assert "excludeText" not in json.loads(plain.value.post_data)
    assert not page.problems, page.problems


def _roi(request) -> dict:
    return {name: float(value) for name, value in _form(request) if name.startswith("roi.")}


def test_a_region_typed_by_keyboard_is_sent_as_fractions_and_clear_region_searches_the_whole_image(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    region = page.get_by_role("region", name="Region of the query image")
    assert region.is_hidden()
    page.set_input_files("#image-file", PICTURE)
    wait_for_results(page)
    assert region.is_visible()
    page.wait_for_function("() => !document.getElementById('region-canvas').hidden")  # the upload, drawn
    search = page.get_by_role("button", name="Search this region")
    assert search.is_disabled()

    page.get_by_label("Left").focus()
    for value in ("10", "20", "50", "90"):  # Top 20 + Height 90: outside the image
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    assert page.evaluate(FOCUS_RING)  # on the next control
    assert search.is_disabled()
    assert "must lie inside the image" in page.locator("#region-state").text_content()
    page.get_by_label("Height").fill("")
    page.get_by_label("Height").focus()
    page.keyboard.type("40")
    assert page.locator("#region-state").text_content() == "Region: Left 10 %, Top 20 %, Width 50 %, Height 40 %."
    tab_to(page, "#region-search")
    with page.expect_request(ORIGIN + "/v1/search/image") as request:
        page.keyboard.press("Enter")
    fields = _form(request.value)
    assert fields == SETTINGS + [("roi.x", "0.1"), ("roi.y", "0.2"), ("roi.width", "0.5"), ("roi.height", "0.4")]
    assert 'name="image"; filename="00000001_000.png"' in request.value.post_data  # the same upload
    page.wait_for_function("() => document.getElementById('results').getAttribute('aria-busy') === 'false'")

    tab_to(page, "#region-clear")
    assert page.evaluate(FOCUS_RING)
    with page.expect_request(ORIGIN + "/v1/search/image") as request:
        page.keyboard.press("Enter")  # the search on screen had a region: the whole image again
    assert _form(request.value) == SETTINGS
    assert [page.get_by_label(name).input_value() for name in ("Left", "Top", "Width", "Height")] == ["", "", "", ""]
    assert search.is_disabled()

    search_text(page, "effusion")  # a text query has no region
    wait_for_results(page)
    assert region.is_hidden()
    assert not page.problems, page.problems


def test_a_region_dragged_on_the_query_picture_is_drawn_and_sent(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    page.set_input_files("#image-file", PICTURE)
    wait_for_results(page)
    page.wait_for_function("() => !document.getElementById('region-canvas').hidden")
    canvas = page.locator("#region-canvas")
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.60, steps=5)
    page.mouse.up()
    typed = [float(page.get_by_label(name).input_value()) for name in ("Left", "Top", "Width", "Height")]
    assert typed == pytest.approx([25, 25, 50, 35], abs=1)
    # The box is drawn: the outline's colour on its left edge, half way down.
    edge = page.evaluate("""() => {
      const c = document.getElementById('region-canvas');
      return Array.from(c.getContext('2d').getImageData(Math.round(c.width / 4), Math.round(c.height * 0.42), 1, 1).data);
    }""")
    assert edge[:3] == pytest.approx([255, 159, 26], abs=40)
    with page.expect_request(ORIGIN + "/v1/search/image") as request:
        page.get_by_role("button", name="Search this region").click()
    sent = _roi(request.value)
    assert [sent["roi.x"], sent["roi.y"], sent["roi.width"], sent["roi.height"]] == pytest.approx(
        [0.25, 0.25, 0.50, 0.35], abs=0.01)
    assert not page.problems, page.problems


def test_a_dicom_query_which_the_browser_cannot_draw_still_takes_a_typed_region(page, canned):
    canned.answers["/v1/search/image"] = _image_search
    page.set_input_files("#image-file", files=[{"name": "query.dcm", "mimeType": "application/dicom",
                                                "buffer": b"\0" * 128 + b"DICM" + b"\0" * 64}])
    wait_for_results(page)
    note = page.locator("#region-note")
    note.wait_for()
    assert note.text_content().startswith("This browser cannot draw the query file")
    assert page.locator("#region-canvas").is_hidden()
    for name, value in (("Left", "0"), ("Top", "0"), ("Width", "100"), ("Height", "50")):
        page.get_by_label(name).fill(value)
    with page.expect_request(ORIGIN + "/v1/search/image") as request:
        page.get_by_role("button", name="Search this region").click()
    assert _form(request.value) == SETTINGS + [("roi.x", "0"), ("roi.y", "0"), ("roi.width", "1"), ("roi.height", "0.5")]
    assert 'name="image"; filename="query.dcm"' in request.value.post_data
    assert not page.problems, page.problems
