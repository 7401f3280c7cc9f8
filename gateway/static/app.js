// The search page: talks to the gateway's HTTP/JSON API (/v1/...) on the same origin.
// No framework, no build step. Everything from the server is shown with textContent, never as HTML.
// Clinicians sign in through the gateway (/auth/..., single sign-on): the session is an HttpOnly
// cookie this script never sees. Service accounts paste a token, kept in sessionStorage.
"use strict";

(function () {
  const TOKEN_KEY = "cxr.token"; // sessionStorage only: gone when the tab closes, never in the URL
  const THEME_KEY = "cxr.theme"; // sessionStorage too: a reading room's choice, not the next user's
  const THUMB_SIZE = 256;
  const READING_SIZE = 512; // GetThumbnail's largest
  const MAX_QUERY_SIDE = 1024; // an uploaded query is drawn at most this large
  const REGION_SIDE = 320; // the region panel's picture of the query, at most this large
  const MIN_REGION = 0.01; // a dragged box narrower or lower than this (a click) is no region
  const WINDOW = { width: 256, level: 128 }; // identity on 8-bit greys
  const WINDOW_STEPS = { width: 16, level: 8, shift: 4 }; // per arrow key; Shift multiplies
  const EXCERPT_CHARS = 220;
  // What /#login-error=<word> from the gateway's sign-in means; the details are in the gateway's log.
  const LOGIN_ERRORS = {
    denied: "Sign-in was cancelled at the identity provider.",
    expired: "That sign-in took too long or was already used: sign in again.",
    "no-role": "Your account has no role that gives access to this service: ask the administrator for one.",
    unavailable: "The identity provider cannot be reached: try again in a minute.",
    failed: "Sign-in failed: try again; if it fails again, the gateway's log says why.",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model-name"), indexSize: $("index-size"), banner: $("demo-banner"), notes: $("demo-notes"),
    tokenForm: $("token-form"), token: $("token"), tokenClear: $("token-clear"), tokenToggle: $("token-toggle"),
    account: $("account"), accountName: $("account-name"), signIn: $("sign-in"), signOut: $("sign-out"),
    form: $("search-form"), query: $("query"), file: $("image-file"), drop: $("drop-zone"),
    labels: $("label-options"), labelCount: $("label-count"), projection: $("projection"), topK: $("top-k"), group: $("group-by-study"),
    dateFrom: $("date-from"), dateTo: $("date-to"), excludePatient: $("exclude-patient"), excludeStudy: $("exclude-study"),
    withWords: $("with-words"), withoutWords: $("without-words"),
    region: $("region"), regionCanvas: $("region-canvas"), regionNote: $("region-note"), regionState: $("region-state"),
    regionSearch: $("region-search"), regionClear: $("region-clear"),
    roi: { x: $("roi-x"), y: $("roi-y"), width: $("roi-width"), height: $("roi-height") },
    status: $("status"), error: $("error"), results: $("results"), template: $("card-template"),
    theme: $("theme-toggle"), suggestions: $("suggestions"), suggestionList: $("suggestion-list"),
    refine: $("refine"), refineButton: $("refine-button"), refineState: $("refine-state"),
    pager: $("pager"), previousPage: $("previous-page"), nextPage: $("next-page"), pageNumber: $("page-number"),
    reading: $("reading"), wlReadout: $("wl-readout"), wlReset: $("wl-reset"), readingClose: $("reading-close"),
    readingPrevious: $("reading-previous"), readingNext: $("reading-next"),
    queryCaption: $("query-caption"), queryCanvas: $("query-canvas"), queryNote: $("query-note"),
    resultCaption: $("result-caption"), resultCanvas: $("result-canvas"), resultNote: $("result-note"),
    readingTags: $("reading-tags"), readingFacts: $("reading-facts"), readingText: $("reading-text"),
  };

  let objectUrls = []; // thumbnails of the grid on screen, revoked when it is replaced
  let generation = 0; // a newer search makes the answers of older ones moot
  let optionsLoaded = false;
  // The search on screen: how to ask for any of its pages (page tokens from the answers), what its query
  // was (for the reading view), and the hits of the page shown. Replaced only by a search that answered.
  let shown = null;
  const account = { sso: false, signedIn: false, user: "" }; // from GET /auth/session

  // ---- talking to the gateway ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, requestId) {
      super(message);
      this.status = status;
      this.requestId = requestId || "";
    }
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  async function api(path, init) {
    const headers = new Headers((init && init.headers) || {});
    const bearer = token();
    if (bearer) headers.set("Authorization", "Bearer " + bearer);
    let response;
    try {
      // Thumbnails may come from the browser's private cache (the gateway marks them private);
      // everything else is asked afresh.
      const cache = path.startsWith("/v1/thumbnails/") ? "default" : "no-store";
      response = await fetch(path, Object.assign({}, init, { headers, credentials: "same-origin", cache }));
    } catch (e) {
      throw new ApiError(0, "The gateway cannot be reached. Check that it is running, then try again.");
    }
    if (response.ok) return response;
    let message = response.statusText || "request failed";
    let requestId = response.headers.get("x-request-id") || "";
    try {
      const body = await response.json();
      if (body && body.error) {
        message = body.error.message || message;
        requestId = body.error.requestId || requestId;
      }
    } catch (e) {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, message, requestId);
  }

  // ---- messages --------------------------------------------------------------------------------

  function say(text) {
    el.status.textContent = text;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  function showError(error) {
    let text = error.message || String(error);
    if (error.status === 401 && account.sso && !token()) {
      text = account.signedIn ? "Your session has ended: sign in again." : "Sign in to search.";
      sessionEnded();
    } else if (error.status === 401) {
      forgetToken(); // refused: expired or mistyped, it is of no further use
      askForToken();
      text = "Enter a valid access token above (the gateway said: " + text + ").";
    } else if (error.status === 403) {
      text = (token() ? "Your token" : "Your account") + " does not allow this: " + text;
    } else {
      text = text.charAt(0).toUpperCase() + text.slice(1);
    }
    if (error.requestId) text += " Request id: " + error.requestId + ".";
    el.error.textContent = text;
    el.error.hidden = false;
    say("");
  }

  function forgetToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // nothing kept
    }
    showTokenState();
  }

  function askForToken() {
    el.tokenForm.hidden = false;
    el.tokenToggle.setAttribute("aria-expanded", "true");
    el.token.value = "";
    el.token.focus();
  }

  function showTokenState() {
    el.tokenToggle.hidden = !token() && !account.sso; // with sign-in, service accounts may still paste one
  }

  // ---- signing in (single sign-on through the gateway) ---------------------------------------------

  async function loadAccount() {
    try {
      const response = await fetch("/auth/session", { credentials: "same-origin", cache: "no-store" });
      if (response.ok) Object.assign(account, await response.json());
    } catch (e) {
      // no answer: the API calls will say what is wrong
    }
    showAccount();
  }

  function showAccount() {
    el.account.hidden = !account.sso;
    el.signIn.hidden = !account.sso || account.signedIn;
    el.signOut.hidden = !account.signedIn;
    el.accountName.textContent = account.signedIn ? "Signed in as " + account.user : "";
    showTokenState();
  }

  function sessionEnded() {
    account.signedIn = false;
    showAccount();
    clearResults(); // reports on screen are patient data: not for whoever comes to the screen next
  }

  function loginErrorFromAddress() {
    const m = /^#login-error=([a-z-]+)$/.exec(location.hash);
    if (!m) return;
    history.replaceState(null, "", location.pathname + location.search);
    showError(new ApiError(0, LOGIN_ERRORS[m[1]] || LOGIN_ERRORS.failed));
  }

  async function signOut() {
    let target = "/";
    try {
      const response = await fetch("/auth/logout", { method: "POST", credentials: "same-origin", cache: "no-store" });
      const body = await response.json();
      if (body && /^(https?:\/\/|\/)/i.test(body.logoutUrl || "")) target = body.logoutUrl;
    } catch (e) {
      // the session is ended at the gateway or was already: go back to the page
    }
    sessionEnded();
    location.assign(target); // the provider's logout, which comes back to this page
  }

  // ---- options: model, demo banner, filter values ------------------------------------------------

  function fillOptions(options) {
    el.model.textContent = options.model || "(none)";
    const size = Number(options.indexSize || 0);
    el.indexSize.textContent = size ? "· " + size.toLocaleString("en") + " images indexed" : "";
    el.banner.hidden = !options.demo;
    el.notes.textContent = options.demo ? options.notes || "" : "";

    el.labels.replaceChildren();
    el.labelCount.textContent = "";
    const labels = options.labels || [];
    if (!labels.length) {
      const none = document.createElement("span");
      none.className = "hint";
      none.textContent = "No finding labels in this index.";
      el.labels.append(none);
    }
    labels.forEach((label, i) => {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "label";
      box.value = label;
      box.id = "label-" + i;
      const tag = document.createElement("label");
      tag.className = "check";
      tag.htmlFor = box.id;
      tag.append(box, " " + label);
      el.labels.append(tag);
    });

    const chosen = el.projection.value;
    el.projection.replaceChildren(new Option("Any view", ""));
    (options.projections || []).forEach((p) => el.projection.append(new Option(p, p, false, p === chosen)));
  }

  async function loadOptions() {
    try {
      const response = await api("/v1/search/options");
      fillOptions(await response.json());
      optionsLoaded = true;
      performance.mark("cxr:options");
    } catch (error) {
      showError(error);
    }
  }

  // ---- searching --------------------------------------------------------------------------------

  function filters() {
    const labels = Array.from(el.labels.querySelectorAll("input[name=label]:checked"), (box) => box.value);
    const projections = el.projection.value ? [el.projection.value] : [];
    const chosen = { labels, projections };
    const from = dicomDate(el.dateFrom.value);
    const to = dicomDate(el.dateTo.value);
    if (from) chosen.studyDateFrom = from;
    if (to) chosen.studyDateTo = to;
    return chosen;
  }

  // A date input's value (YYYY-MM-DD, or "" when empty or half typed) as DICOM's DA: YYYYMMDD.
  function dicomDate(value) {
    return /^\d{4}-\d{2}-\d{2}$/.test(value) ? value.replace(/-/g, "") : "";
  }

  // A search: `what` for the status line, `send(pageToken)` asks the gateway for one page, `query` says
  // what the reading view shows beside a result ({kind: "text" | "upload" | "archived", ...}).
  function newSearch(what, send, query) {
    return { what, send, query, tokens: [""], page: 0, hits: [], model: "", queryImage: null, asked: null, round: 0 };
  }

  // A query as the user asked it, and their marks on its results (image id -> "relevant" | "not"):
  // `make(feedback)` gives a search of it moved by those marks (Rocchio, on the gateway). The marks live
  // in this page's memory only, and a new query starts without any.
  function ask(make) {
    const search = make(null);
    search.asked = { make, marks: new Map() };
    run(search, 0);
  }

  // Every mark so far, as the API's Feedback (cumulative: each round sends them all); null without any.
  function feedbackOf(marks) {
    const relevantImageIds = [];
    const notRelevantImageIds = [];
    marks.forEach((mark, imageId) => (mark === "relevant" ? relevantImageIds : notRelevantImageIds).push(imageId));
    if (!relevantImageIds.length && !notRelevantImageIds.length) return null;
    const feedback = {};
    if (relevantImageIds.length) feedback.relevantImageIds = relevantImageIds;
    if (notRelevantImageIds.length) feedback.notRelevantImageIds = notRelevantImageIds;
    return feedback;
  }

  function refine() {
    const asked = shown && shown.asked;
    const feedback = asked && feedbackOf(asked.marks);
    if (!feedback) return;
    const search = asked.make(feedback);
    search.asked = asked;
    search.round = shown.round + 1;
    run(search, 0);
  }

  function countMarks(marks) {
    let relevant = 0;
    marks.forEach((mark) => { if (mark === "relevant") relevant++; });
    return { relevant, not: marks.size - relevant };
  }

  function showRefine() {
    el.refine.hidden = !shown || !shown.asked;
    if (el.refine.hidden) return;
    const n = countMarks(shown.asked.marks);
    el.refineButton.disabled = !shown.asked.marks.size;
    const marked = n.relevant + " relevant, " + n.not + " not relevant marked";
    el.refineState.textContent = (shown.round ? "Round " + shown.round + " of feedback. " : "")
      + (shown.asked.marks.size ? marked + "." : "Mark results Relevant or Not relevant, then refine.");
  }

  function setMark(imageId, mark, buttons) {
    const marks = shown.asked.marks;
    if (marks.get(imageId) === mark) marks.delete(imageId);
    else marks.set(imageId, mark);
    showMarks(marks.get(imageId), buttons);
    showRefine();
  }

  function showMarks(mark, buttons) {
    buttons.relevant.setAttribute("aria-pressed", String(mark === "relevant"));
    buttons.not.setAttribute("aria-pressed", String(mark === "not"));
  }

  async function run(search, page) {
    const mine = ++generation;
    clearError();
    say("Searching " + search.what + "…");
    el.results.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const response = await search.send(search.tokens[page] || "");
      const answer = await response.json();
      if (mine !== generation) return;
      if (answer.model) el.model.textContent = answer.model;
      const hits = answer.hits || [];
      search.page = page;
      search.hits = hits;
      search.model = answer.model || "";
      search.tokens.length = page + 1; // a later page's token is only good after this page's answer
      if (answer.nextPageToken) search.tokens.push(answer.nextPageToken);
      shown = search;
      render(hits, search.model, mine);
      showSuggestions(answer.suggestions || []);
      showPager();
      showRefine();
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      say((hits.length ? hits.length + (hits.length === 1 ? " result" : " results") + " " + search.what + " in "
        + seconds + " s." : "No matching images " + search.what + ". Try fewer filters.")
        + (page ? " Page " + (page + 1) + "." : "") + (search.round ? " Round " + search.round + " of feedback." : ""));
      if (!optionsLoaded) loadOptions(); // after a token was entered
    } catch (error) {
      if (mine !== generation) return;
      el.results.setAttribute("aria-busy", "false");
      showError(error); // the results of the last search that answered stay on screen
    }
  }

  function searchText() {
    const text = el.query.value.trim();
    if (!text) {
      generation++;
      showError(new ApiError(0, "Type a finding to search for (e.g. “cardiomegaly”), or drop an image."));
      el.query.focus();
      return;
    }
    const body = {
      text, topK: Number(el.topK.value), model: "", filters: filters(), groupByStudy: el.group.checked,
    };
    hideRegionPanel();
    const without = el.withoutWords.value.trim(); // "pacemaker": the words' embedding taken away
    if (without) body.excludeText = without;
    ask((feedback) => newSearch("by text", (pageToken) => {
      const page = Object.assign({}, body);
      if (feedback) page.feedback = feedback;
      if (pageToken) page.pageToken = pageToken;
      return api("/v1/search/text", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(page),
      });
    }, { kind: "text", text }));
  }

  // The multipart form of an image search: the search's settings as form fields, so nothing of the
  // query (an image id names a patient's image) goes into a URL.
  function imageForm(blob, name) {
    const form = new FormData();
    form.append("image", blob, name || "query");
    form.append("top_k", el.topK.value);
    form.append("model", "");
    const f = filters();
    f.labels.forEach((label) => form.append("label", label));
    f.projections.forEach((projection) => form.append("projection", projection));
    form.append("group_by_study", el.group.checked ? "true" : "false");
    if (f.studyDateFrom) form.append("study_date_from", f.studyDateFrom);
    if (f.studyDateTo) form.append("study_date_to", f.studyDateTo);
    // The gateway knows whether the query has a patient (a DICOM's PatientID, an archived image's row):
    // the page sends what was asked and shows a refusal, it does not guess from the file type.
    if (el.excludePatient.checked) form.append("exclude_same_patient", "true");
    if (el.excludeStudy.checked) form.append("exclude_same_study", "true");
    const words = el.withWords.value.trim(); // "like this, with effusion": the words' embedding added
    if (words) form.append("with_text", words);
    return form;
  }

  // How to make an image search with feedback (ask()); the form's fields hold for every page and round.
  function imageSearch(fields, query) {
    return (feedback) => newSearch("by image", (pageToken) => {
      const form = new FormData();
      fields.forEach((value, key) => form.append(key, value));
      ((feedback && feedback.relevantImageIds) || []).forEach((id) => form.append("relevant_image_id", id));
      ((feedback && feedback.notRelevantImageIds) || []).forEach((id) => form.append("not_relevant_image_id", id));
      if (pageToken) form.append("page_token", pageToken);
      return api("/v1/search/image", { method: "POST", body: form });
    }, query);
  }

  function searchImage(blob, name) {
    showRegionPanel(blob, name);
    ask(imageSearch(imageForm(blob, name), { kind: "upload", blob, name: name || "" }));
  }

  // Find similar: a search by an archived image's id (SearchByImageRequest.image_id), nothing uploaded.
  // The image part stays empty so that the form reads as every image search's does.
  function searchArchived(hit, model) {
    hideRegionPanel(); // a region is of an uploaded image's pixels
    const fields = imageForm(new Blob([]), "query");
    fields.append("image_id", hit.imageId);
    ask(imageSearch(fields, { kind: "archived", imageId: hit.imageId, model, rank: hit.rank }));
  }

  // ---- a region of the uploaded query (roi: fractions of the image from its top left corner) -----------
  // The picture is drawn from the file held in this page; a DICOM file the browser cannot draw still
  // takes a region typed as numbers. The box is kept in fractions; the inputs show it in percent.

  const region = { upload: null, picture: null, box: null, drag: null };

  function showRegionPanel(blob, name) {
    region.upload = { blob, name: name || "" };
    region.picture = null;
    setBox(null, true);
    el.region.hidden = false;
    el.regionCanvas.hidden = true;
    el.regionNote.hidden = true;
    createImageBitmap(blob).then((bitmap) => {
      if (!region.upload || region.upload.blob !== blob) return;
      const scale = Math.min(1, REGION_SIDE / Math.max(bitmap.width, bitmap.height));
      el.regionCanvas.width = Math.max(1, Math.round(bitmap.width * scale));
      el.regionCanvas.height = Math.max(1, Math.round(bitmap.height * scale));
      region.picture = bitmap;
      el.regionCanvas.hidden = false;
      drawRegion();
    }).catch(() => {
      el.regionNote.textContent = "This browser cannot draw the query file (a DICOM file is read by the gateway "
        + "only): type the region in percent.";
      el.regionNote.hidden = false;
    });
  }

  function hideRegionPanel() {
    if (region.picture && region.picture.close) region.picture.close();
    region.upload = null;
    region.picture = null;
    setBox(null, true);
    el.region.hidden = true;
  }

  function drawRegion() {
    if (!region.picture) return;
    const canvas = el.regionCanvas;
    const context = canvas.getContext("2d");
    context.drawImage(region.picture, 0, 0, canvas.width, canvas.height);
    const box = region.box;
    if (!box) return;
    context.lineWidth = 2;
    context.strokeStyle = "#ff9f1a";
    context.strokeRect(box.x * canvas.width, box.y * canvas.height, box.width * canvas.width, box.height * canvas.height);
  }

  // `write`: show the box in the inputs too (from a drag or a clearing, not from the inputs themselves).
  function setBox(box, write) {
    region.box = box;
    if (write) {
      Object.keys(el.roi).forEach((key) => {
        el.roi[key].value = box ? String(Math.round(box[key] * 1000) / 10) : "";
      });
    }
    el.regionSearch.disabled = !box;
    el.regionState.textContent = box ? "Region: " + Object.keys(el.roi).map((key) => el.roi[key].labels[0].textContent
      + " " + Math.round(box[key] * 1000) / 10 + " %").join(", ") + "." : "No region: the whole image is searched.";
    drawRegion();
  }

  function boxFromInputs() {
    const v = {};
    for (const key of Object.keys(el.roi)) {
      const raw = el.roi[key].value.trim();
      if (raw === "" || !Number.isFinite(Number(raw))) return null;
      v[key] = Number(raw) / 100;
    }
    const inside = v.x >= 0 && v.y >= 0 && v.width > 0 && v.height > 0
      && v.x + v.width <= 1 + 1e-9 && v.y + v.height <= 1 + 1e-9;
    return inside ? v : null;
  }

  function onRegionInput() {
    const box = boxFromInputs();
    setBox(box, false);
    const typed = Object.keys(el.roi).every((key) => el.roi[key].value.trim() !== "");
    if (!box && typed) el.regionState.textContent = "The region must lie inside the image: Left + Width and Top + Height "
      + "at most 100, Width and Height above 0.";
  }

  function regionPoint(event) {
    const rect = el.regionCanvas.getBoundingClientRect();
    const fraction = (value) => Math.max(0, Math.min(1, value));
    return { x: fraction((event.clientX - rect.left) / rect.width), y: fraction((event.clientY - rect.top) / rect.height) };
  }

  function onRegionDrag(event) {
    const drag = region.drag;
    if (!drag || drag.pointer !== event.pointerId) return;
    const p = regionPoint(event);
    const box = { x: Math.min(drag.x, p.x), y: Math.min(drag.y, p.y), width: Math.abs(p.x - drag.x),
      height: Math.abs(p.y - drag.y) };
    setBox(box.width >= MIN_REGION && box.height >= MIN_REGION ? box : null, true);
  }

  function regionFields(box) {
    const fraction = (value) => String(Math.round(value * 10000) / 10000);
    return [["roi.x", fraction(box.x)], ["roi.y", fraction(box.y)], ["roi.width", fraction(box.width)],
      ["roi.height", fraction(box.height)]];
  }

  // Searching the region (or, after Clear region, the whole image again) is a new query: no marks.
  function searchRegion(box) {
    const { blob, name } = region.upload;
    const fields = imageForm(blob, name);
    if (box) regionFields(box).forEach(([key, value]) => fields.append(key, value));
    ask(imageSearch(fields, { kind: "upload", blob, name, region: box ? Object.assign({}, box) : null }));
  }

  el.regionCanvas.addEventListener("pointerdown", (event) => {
    el.regionCanvas.setPointerCapture(event.pointerId);
    region.drag = Object.assign({ pointer: event.pointerId }, regionPoint(event));
    event.preventDefault();
  });
  el.regionCanvas.addEventListener("pointermove", onRegionDrag);
  ["pointerup", "pointercancel"].forEach((type) => el.regionCanvas.addEventListener(type, () => { region.drag = null; }));
  Object.keys(el.roi).forEach((key) => el.roi[key].addEventListener("input", onRegionInput));
  el.regionSearch.addEventListener("click", () => { if (region.upload && region.box) searchRegion(region.box); });
  el.regionClear.addEventListener("click", () => {
    setBox(null, true);
    if (region.upload && shown && shown.query.region) searchRegion(null);
  });

  // ---- suggestions and pages ----------------------------------------------------------------------

  function percent(probability) {
    const p = Math.max(0, Math.min(1, Number(probability) || 0));
    return (p < 0.01 && p > 0 ? "<1" : String(Math.round(p * 100))) + " %";
  }

  function showSuggestions(suggestions) {
    el.suggestionList.replaceChildren();
    suggestions.forEach((s) => {
      const li = document.createElement("li");
      const label = document.createElement("strong");
      label.textContent = s.label || "";
      const odds = document.createElement("span");
      odds.className = "probability";
      odds.textContent = percent(s.probability);
      const count = Number(s.neighbours || 0);
      const neighbours = document.createElement("span");
      neighbours.className = "neighbours";
      neighbours.textContent = count + (count === 1 ? " similar case" : " similar cases");
      li.append(label, " ", odds, " · ", neighbours);
      el.suggestionList.append(li);
    });
    el.suggestions.hidden = !suggestions.length;
  }

  function showPager() {
    const s = shown;
    const more = Boolean(s && s.tokens.length > s.page + 1);
    const back = Boolean(s && s.page > 0);
    el.nextPage.hidden = !more;
    el.previousPage.hidden = !back;
    el.pageNumber.textContent = s && (more || back) ? "Page " + (s.page + 1) : "";
    el.pager.hidden = !more && !back;
  }

  // ---- results ------------------------------------------------------------------------------------

  function revokeThumbnails() {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
  }

  function clearResults() {
    generation++;
    revokeThumbnails();
    if (el.reading.open) el.reading.close();
    shown = null;
    hideRegionPanel(); // the query's picture too
    showSuggestions([]);
    showPager();
    showRefine();
    el.results.replaceChildren();
    el.results.setAttribute("aria-busy", "false");
  }

  function formatDate(value) {
    const m = /^(\d{4})(\d{2})(\d{2})$/.exec(value || "");
    return m ? m[1] + "-" + m[2] + "-" + m[3] : value || "";
  }

  function excerpt(hit) {
    const text = [hit.findings, hit.impression].filter(Boolean).join(" ").replace(/\s+/g, " ").trim();
    return text.length > EXCERPT_CHARS ? text.slice(0, EXCERPT_CHARS - 1).trimEnd() + "…" : text;
  }

  function fact(list, term, value) {
    if (!value) return;
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }

  function card(hit, index, model, mine) {
    const node = el.template.content.firstElementChild.cloneNode(true);
    node.dataset.imageId = hit.imageId || "";
    const view = hit.viewPosition || hit.projection || "";
    const img = node.querySelector("img");
    img.alt = "Result " + hit.rank + (view ? ", " + view + " view" : "") + " chest X-ray";
    node.querySelector(".rank").textContent = "#" + hit.rank;
    const score = node.querySelector(".score");
    score.textContent = Number(hit.score || 0).toFixed(3);
    score.title = "cosine similarity";

    const tags = node.querySelector(".tags");
    (hit.labels || []).forEach((label) => {
      const li = document.createElement("li");
      li.textContent = label;
      tags.append(li);
    });
    // Labels read from a report by the labeler are a machine's reading, not a person's annotation.
    tags.setAttribute("aria-label", hit.labelsDerived ? "Findings read from the report" : "Findings");
    if (hit.labelsDerived) tags.title = "Read from the report text by the labeler, not annotated";

    const facts = node.querySelector(".facts");
    fact(facts, "View", [hit.projection, hit.viewPosition].filter(Boolean)
      .filter((v, i, all) => all.indexOf(v) === i).join(" · "));
    fact(facts, "Date", formatDate(hit.studyDate));
    fact(facts, "Accession", hit.accessionNumber);
    const images = (hit.imageIds || []).length;
    if (images > 1) fact(facts, "Study", images + " matching images");

    const report = node.querySelector(".report");
    report.textContent = excerpt(hit);
    report.hidden = !report.textContent;
    if (report.textContent) report.title = [hit.findings, hit.impression].filter(Boolean).join("\n\n");

    const viewer = node.querySelector("a.viewer");
    if (hit.viewerUrl && /^https?:\/\//i.test(hit.viewerUrl)) {
      viewer.href = hit.viewerUrl;
      viewer.hidden = false;
    }

    const read = node.querySelector("button.read");
    read.setAttribute("aria-label", "Reading view of result " + hit.rank);
    read.addEventListener("click", () => openReading(index, read));

    const open = node.querySelector("button.open-study");
    open.hidden = !hit.studyUid;
    open.setAttribute("aria-label", "Full report of result " + hit.rank);
    open.addEventListener("click", () => toggleStudy(node, open, hit.studyUid, model));
    const panel = node.querySelector(".study");
    [open, panel].forEach((target) => target.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || panel.hidden) return;
      event.preventDefault();
      closeStudy(panel, open);
    }));

    const similar = node.querySelector("button.similar");
    similar.setAttribute("aria-label", "Find similar to result " + hit.rank);
    similar.hidden = !hit.imageId;
    similar.addEventListener("click", () => searchArchived(hit, model));

    // Marks belong to the query on screen (shown.asked), so a mark made on any page or round counts.
    const buttons = { relevant: node.querySelector("button.relevant"), not: node.querySelector("button.not-relevant") };
    node.querySelector(".marks").hidden = !hit.imageId || !shown || !shown.asked;
    node.querySelector(".marks").setAttribute("aria-label", "Relevance of result " + hit.rank);
    buttons.relevant.setAttribute("aria-label", "Relevant, result " + hit.rank);
    buttons.not.setAttribute("aria-label", "Not relevant, result " + hit.rank);
    if (shown && shown.asked) showMarks(shown.asked.marks.get(hit.imageId), buttons);
    buttons.relevant.addEventListener("click", () => setMark(hit.imageId, "relevant", buttons));
    buttons.not.addEventListener("click", () => setMark(hit.imageId, "not", buttons));

    return { node, loaded: loadThumbnail(img, hit.imageId, model, mine) };
  }

  // GetStudy: the whole report and the study's facts, for principals with the `studies` scope.
  async function toggleStudy(node, button, studyUid, model) {
    const panel = node.querySelector(".study");
    if (!panel.hidden) {
      closeStudy(panel, button);
      return;
    }
    try {
      showStudy(panel, await getStudy(studyUid, model));
      panel.hidden = false;
      button.setAttribute("aria-expanded", "true");
      panel.focus(); // the report is read next; Escape (or the button again) closes it
    } catch (error) {
      showError(error);
    }
  }

  function closeStudy(panel, button) {
    panel.hidden = true;
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }

  async function getStudy(studyUid, model) {
    const query = new URLSearchParams({ model });
    const response = await api("/v1/studies/" + encodeURIComponent(studyUid) + "?" + query.toString());
    return response.json();
  }

  function showStudy(panel, study) {
    showReport(panel.querySelector(".study-facts"), panel.querySelector(".full-report"), study);
  }

  function showReport(facts, textNode, study) {
    facts.replaceChildren();
    fact(facts, "Findings", (study.labels || []).join(", "));
    fact(facts, "Images", String((study.imageIds || []).length || ""));
    fact(facts, "Date", formatDate(study.studyDate));
    fact(facts, "Accession", study.accessionNumber);
    fact(facts, "Report", study.reportStatus);
    const text = [study.indication, study.findings, study.impression].filter(Boolean).join("\n\n");
    textNode.textContent = text || "No report text for this study.";
  }

  function thumbnailPath(imageId, model, size) {
    const query = new URLSearchParams({ model, size: String(size) });
    return "/v1/thumbnails/" + encodeURIComponent(imageId) + "?" + query.toString();
  }

  async function loadThumbnail(img, imageId, model, mine) {
    const frame = img.parentElement;
    try {
      const response = await api(thumbnailPath(imageId, model, THUMB_SIZE));
      const blob = await response.blob();
      if (mine !== generation) return;
      const url = URL.createObjectURL(blob);
      objectUrls.push(url);
      await new Promise((resolve) => {
        img.addEventListener("load", resolve, { once: true });
        img.addEventListener("error", resolve, { once: true });
        img.src = url;
      });
      if (!img.naturalWidth) frame.classList.add("missing");
    } catch (error) {
      frame.classList.add("missing");
      frame.title = "No thumbnail: " + error.message;
    }
  }

  function render(hits, model, mine) {
    revokeThumbnails();
    const cards = hits.map((hit, index) => card(hit, index, model, mine));
    el.results.replaceChildren(...cards.map((c) => c.node));
    Promise.all(cards.map((c) => c.loaded)).then(() => {
      if (mine !== generation) return;
      el.results.setAttribute("aria-busy", "false");
      performance.mark("cxr:thumbnails");
    });
  }

  // ---- the reading view: the query beside one result, enlarged, with window and level ---------------
  // Drawn on canvases from the pictures the page already has: GetThumbnail at its largest size, or the
  // query file the user chose (kept in this page only, never sent anywhere but the search itself).

  const reading = {
    index: -1, opener: null, generation: 0, window: Object.assign({}, WINDOW), drag: null, frame: 0,
    views: [
      { canvas: el.queryCanvas, note: el.queryNote, source: null },
      { canvas: el.resultCanvas, note: el.resultNote, source: null },
    ],
  };

  function clamp(value, low, high) {
    return Math.max(low, Math.min(high, Math.round(value)));
  }

  function setWindow(width, level) {
    reading.window.width = clamp(width, 2, 512);
    reading.window.level = clamp(level, 0, 255);
    if (!reading.frame) reading.frame = requestAnimationFrame(drawViews);
  }

  // Window/level as a lookup table on 8-bit values: DICOM's linear function (PS3.3 C.11.2.1.2), black
  // below the window, white above it; width 256 and level 128 leave every value as it is.
  function windowTable() {
    const { width, level } = reading.window;
    const table = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) table[v] = ((v - (level - 0.5)) / (width - 1) + 0.5) * 255;
    return table;
  }

  function drawViews() {
    reading.frame = 0;
    const table = windowTable();
    reading.views.forEach((view) => {
      if (!view.source) return;
      const out = new ImageData(view.source.width, view.source.height);
      const from = view.source.data;
      const to = out.data;
      for (let i = 0; i < from.length; i += 4) {
        to[i] = table[from[i]];
        to[i + 1] = table[from[i + 1]];
        to[i + 2] = table[from[i + 2]];
        to[i + 3] = 255;
      }
      view.canvas.getContext("2d").putImageData(out, 0, 0);
    });
    const { width, level } = reading.window;
    const text = "Window " + width + " · Level " + level;
    el.wlReadout.textContent = text;
    reading.views.forEach((view) => {
      view.canvas.dataset.window = String(width);
      view.canvas.dataset.level = String(level);
      view.canvas.setAttribute("aria-label", (view.label || "Image") + ", " + text.toLowerCase());
    });
  }

  // `bitmap` is closed once drawn unless `keep`: the query's is kept for every result of its search.
  function showPicture(view, bitmap, label, keep) {
    const scale = Math.min(1, MAX_QUERY_SIDE / Math.max(bitmap.width, bitmap.height));
    const width = Math.max(1, Math.round(bitmap.width * scale));
    const height = Math.max(1, Math.round(bitmap.height * scale));
    view.canvas.width = width;
    view.canvas.height = height;
    const context = view.canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0, width, height);
    if (!keep && bitmap.close) bitmap.close();
    view.source = context.getImageData(0, 0, width, height);
    view.label = label;
    view.canvas.hidden = false;
    view.note.hidden = true;
    drawViews();
  }

  function showNoPicture(view, text) {
    view.source = null;
    view.canvas.hidden = true;
    view.note.textContent = text;
    view.note.hidden = false;
  }

  async function thumbnailBitmap(imageId, model) {
    const response = await api(thumbnailPath(imageId, model, READING_SIZE));
    return createImageBitmap(await response.blob());
  }

  // The query's picture, once per search: an uploaded PNG/JPEG as it is, an archived image's thumbnail;
  // a DICOM file is decoded by the gateway only, so the browser has no picture of it.
  function queryPicture(search) {
    if (!search.queryImage) {
      const q = search.query;
      search.queryImage = q.kind === "upload" ? createImageBitmap(q.blob).catch(() => {
        throw new Error("this browser cannot draw the query file (" + (q.name || "a DICOM file")
          + "); the gateway read it for the search");
      }) : q.kind === "archived" ? thumbnailBitmap(q.imageId, q.model) : Promise.resolve(null);
    }
    return search.queryImage;
  }

  function openReading(index, opener) {
    if (!shown || !shown.hits[index]) return;
    reading.opener = opener;
    if (!el.reading.open) el.reading.showModal();
    showReading(index);
    el.resultCanvas.focus();
  }

  async function showReading(index) {
    const search = shown;
    const hit = search.hits[index];
    const mine = ++reading.generation;
    reading.index = index;
    el.readingPrevious.disabled = index === 0;
    el.readingNext.disabled = index >= search.hits.length - 1;
    const view = hit.viewPosition || hit.projection || "";
    const label = "Result " + hit.rank + (view ? ", " + view + " view" : "");
    el.resultCaption.textContent = label + " · score " + Number(hit.score || 0).toFixed(3);
    showReadingReport(hit, search.model, mine);

    const q = search.query;
    el.queryCaption.textContent = q.kind === "archived" ? "Query: result " + q.rank + " of the earlier search"
      : q.kind === "upload" ? "Query image" : "Query";
    const [query, result] = await Promise.allSettled([queryPicture(search), thumbnailBitmap(hit.imageId, search.model)]);
    if (mine !== reading.generation || !el.reading.open) return;
    const [queryView, resultView] = reading.views;
    if (query.status === "rejected") showNoPicture(queryView, "No picture of the query: " + query.reason.message + ".");
    else if (!query.value) showNoPicture(queryView, "A text query: “" + q.text + "”. No query image to compare.");
    else showPicture(queryView, query.value, "Query image", true);
    if (result.status === "rejected") showNoPicture(resultView, "No picture of this result: " + result.reason.message + ".");
    else showPicture(resultView, result.value, label);
  }

  // The whole report: the hit's own text at once, then the study's (GetStudy) where the principal may read it.
  async function showReadingReport(hit, model, mine) {
    el.readingTags.replaceChildren();
    (hit.labels || []).forEach((label) => {
      const li = document.createElement("li");
      li.textContent = label;
      el.readingTags.append(li);
    });
    showReport(el.readingFacts, el.readingText, {
      studyDate: hit.studyDate, accessionNumber: hit.accessionNumber, findings: hit.findings, impression: hit.impression,
    });
    if (!hit.studyUid) return;
    try {
      const study = await getStudy(hit.studyUid, model);
      if (mine === reading.generation) showReport(el.readingFacts, el.readingText, study);
    } catch (error) {
      // no `studies` scope, or the study is gone: the hit's report text stays
    }
  }

  function closeReading() {
    reading.generation++;
    reading.views.forEach((view) => {
      view.source = null;
      view.canvas.getContext("2d").clearRect(0, 0, view.canvas.width, view.canvas.height);
    });
    el.readingText.textContent = ""; // report text is patient data: not kept in a closed view
    el.readingFacts.replaceChildren();
    el.readingTags.replaceChildren();
  }

  function onWindowKey(event) {
    const step = event.shiftKey ? WINDOW_STEPS.shift : 1;
    const { width, level } = reading.window;
    const moves = {
      ArrowLeft: [width - WINDOW_STEPS.width * step, level], ArrowRight: [width + WINDOW_STEPS.width * step, level],
      ArrowDown: [width, level - WINDOW_STEPS.level * step], ArrowUp: [width, level + WINDOW_STEPS.level * step],
    };
    if (moves[event.key]) setWindow(...moves[event.key]);
    else if (event.key === "r" || event.key === "R" || event.key === "Home") setWindow(WINDOW.width, WINDOW.level);
    else return;
    event.preventDefault();
  }

  function onWindowDrag(event) {
    const drag = reading.drag;
    if (!drag || drag.pointer !== event.pointerId) return;
    setWindow(drag.width + (event.clientX - drag.x), drag.level + (event.clientY - drag.y));
  }

  reading.views.forEach(({ canvas }) => {
    canvas.addEventListener("keydown", onWindowKey);
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      reading.drag = { pointer: event.pointerId, x: event.clientX, y: event.clientY,
        width: reading.window.width, level: reading.window.level };
      event.preventDefault();
    });
    canvas.addEventListener("pointermove", onWindowDrag);
    ["pointerup", "pointercancel"].forEach((type) => canvas.addEventListener(type, () => { reading.drag = null; }));
  });
  el.wlReset.addEventListener("click", () => setWindow(WINDOW.width, WINDOW.level));
  el.readingClose.addEventListener("click", () => el.reading.close());
  el.readingPrevious.addEventListener("click", () => showReading(reading.index - 1));
  el.readingNext.addEventListener("click", () => showReading(reading.index + 1));
  el.reading.addEventListener("close", () => {
    closeReading();
    const back = reading.opener && reading.opener.isConnected ? reading.opener : el.query;
    back.focus();
  });

  // ---- theme: dark for reading rooms --------------------------------------------------------------

  const darkScheme = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function chosenTheme() {
    try {
      const theme = sessionStorage.getItem(THEME_KEY);
      if (theme === "dark" || theme === "light") return theme;
    } catch (e) {
      // no storage: follow the system
    }
    return darkScheme && darkScheme.matches ? "dark" : "light";
  }

  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    el.theme.setAttribute("aria-pressed", String(theme === "dark"));
  }

  el.theme.addEventListener("click", () => {
    const theme = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    try {
      sessionStorage.setItem(THEME_KEY, theme);
    } catch (e) {
      // not kept: this page still shows it
    }
    applyTheme(theme);
  });
  if (darkScheme && darkScheme.addEventListener) darkScheme.addEventListener("change", () => applyTheme(chosenTheme()));
  applyTheme(chosenTheme());

  // ---- wiring -------------------------------------------------------------------------------------

  el.labels.addEventListener("change", () => {
    const n = filters().labels.length;
    el.labelCount.textContent = n ? "(" + n + " selected)" : "";
  });

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    searchText();
  });

  el.file.addEventListener("change", () => {
    const file = el.file.files && el.file.files[0];
    if (file) searchImage(file, file.name);
    el.file.value = "";
  });

  ["dragenter", "dragover"].forEach((type) => el.drop.addEventListener(type, (event) => {
    event.preventDefault();
    el.drop.classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((type) => el.drop.addEventListener(type, () => el.drop.classList.remove("over")));
  el.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    el.drop.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) searchImage(file, file.name);
  });
  // A file dropped beside the zone would otherwise replace the page with the image.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  el.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = el.token.value.trim().replace(/^Bearer\s+/i, "");
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // storage refused (private mode): the token cannot be kept
    }
    el.token.value = "";
    showTokenState();
    clearError();
    say(value ? "Token saved for this tab." : "Token cleared.");
    loadOptions().then(() => {
      if (!optionsLoaded) return;
      el.tokenForm.hidden = true;
      el.tokenToggle.setAttribute("aria-expanded", "false");
      if (el.query.value.trim()) searchText();
    });
  });

  el.tokenToggle.addEventListener("click", () => {
    const open = el.tokenForm.hidden;
    el.tokenForm.hidden = !open;
    el.tokenToggle.setAttribute("aria-expanded", String(open));
    if (open) el.token.focus();
  });

  el.tokenClear.addEventListener("click", () => {
    forgetToken();
    el.token.value = "";
    say("Token forgotten.");
  });

  el.signOut.addEventListener("click", signOut);

  // A pager button hides on the first or last page: the keyboard goes on at the new page's first result.
  function focusNewPage() {
    const focused = document.activeElement;
    if (focused && focused !== document.body && focused.offsetParent !== null) return;
    const first = el.results.querySelector(".card button.read");
    if (first) first.focus();
  }
  el.refineButton.addEventListener("click", refine);
  el.nextPage.addEventListener("click", () => run(shown, shown.page + 1).then(focusNewPage));
  el.previousPage.addEventListener("click", () => run(shown, shown.page - 1).then(focusNewPage));

  window.addEventListener("pagehide", revokeThumbnails);

  showTokenState(); // a token kept from earlier in this tab can be replaced or forgotten
  loginErrorFromAddress();
  loadAccount().then(() => {
    if (account.sso && !account.signedIn && !token()) {
      say("Sign in to search.");
      return; // nothing to load before the sign-in
    }
    loadOptions();
  });
})();
