// The search page: talks to the gateway's HTTP/JSON API (/v1/...) on the same origin.
// No framework, no build step. Everything from the server is shown with textContent, never as HTML.
// Clinicians sign in through the gateway (/auth/..., single sign-on): the session is an HttpOnly
// cookie this script never sees. Service accounts paste a token, kept in sessionStorage.
"use strict";

(function () {
  const TOKEN_KEY = "cxr.token"; // sessionStorage only: gone when the tab closes, never in the URL
  const THUMB_SIZE = 256;
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
    status: $("status"), error: $("error"), results: $("results"), template: $("card-template"),
  };

  let objectUrls = []; // thumbnails of the grid on screen, revoked when it is replaced
  let generation = 0; // a newer search makes the answers of older ones moot
  let optionsLoaded = false;
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
    return { labels, projections };
  }

  async function run(what, request) {
    const mine = ++generation;
    clearError();
    say("Searching " + what + "…");
    el.results.setAttribute("aria-busy", "true");
    const started = performance.now();
    try {
      const response = await request();
      const answer = await response.json();
      if (mine !== generation) return;
      if (answer.model) el.model.textContent = answer.model;
      const hits = answer.hits || [];
      render(hits, answer.model || "", mine);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      say(hits.length ? hits.length + (hits.length === 1 ? " result" : " results") + " " + what + " in " + seconds + " s."
        : "No matching images " + what + ". Try fewer filters.");
      if (!optionsLoaded) loadOptions(); // after a token was entered
    } catch (error) {
      if (mine !== generation) return;
      el.results.setAttribute("aria-busy", "false");
      showError(error);
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
    run("by text", () => api("/v1/search/text", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }));
  }

  function searchImage(blob, name) {
    const form = new FormData();
    form.append("image", blob, name || "query");
    form.append("top_k", el.topK.value);
    form.append("model", "");
    const f = filters();
    f.labels.forEach((label) => form.append("label", label));
    f.projections.forEach((projection) => form.append("projection", projection));
    form.append("group_by_study", el.group.checked ? "true" : "false");
    run("by image", () => api("/v1/search/image", { method: "POST", body: form }));
  }

  // ---- results ------------------------------------------------------------------------------------

  function revokeThumbnails() {
    objectUrls.forEach((url) => URL.revokeObjectURL(url));
    objectUrls = [];
  }

  function clearResults() {
    generation++;
    revokeThumbnails();
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

  function card(hit, model, mine) {
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

    const open = node.querySelector("button.open-study");
    open.hidden = !hit.studyUid;
    open.setAttribute("aria-label", "Full report of result " + hit.rank);
    open.addEventListener("click", () => toggleStudy(node, open, hit.studyUid, model));

    const similar = node.querySelector("button.similar");
    similar.setAttribute("aria-label", "Find similar to result " + hit.rank);
    similar.addEventListener("click", async () => {
      try {
        const response = await api(thumbnailPath(hit.imageId, model, 512));
        searchImage(await response.blob(), "result-" + hit.rank + ".png");
      } catch (error) {
        showError(error);
      }
    });

    return { node, loaded: loadThumbnail(img, hit.imageId, model, mine) };
  }

  // GetStudy: the whole report and the study's facts, for principals with the `studies` scope.
  async function toggleStudy(node, button, studyUid, model) {
    const panel = node.querySelector(".study");
    if (!panel.hidden) {
      panel.hidden = true;
      button.setAttribute("aria-expanded", "false");
      return;
    }
    try {
      const query = new URLSearchParams({ model });
      const response = await api("/v1/studies/" + encodeURIComponent(studyUid) + "?" + query.toString());
      showStudy(panel, await response.json());
      panel.hidden = false;
      button.setAttribute("aria-expanded", "true");
    } catch (error) {
      showError(error);
    }
  }

  function showStudy(panel, study) {
    const facts = panel.querySelector(".study-facts");
    facts.replaceChildren();
    fact(facts, "Findings", (study.labels || []).join(", "));
    fact(facts, "Images", String((study.imageIds || []).length || ""));
    fact(facts, "Date", formatDate(study.studyDate));
    fact(facts, "Accession", study.accessionNumber);
    fact(facts, "Report", study.reportStatus);
    const text = [study.indication, study.findings, study.impression].filter(Boolean).join("\n\n");
    panel.querySelector(".full-report").textContent = text || "No report text for this study.";
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
    const cards = hits.map((hit) => card(hit, model, mine));
    el.results.replaceChildren(...cards.map((c) => c.node));
    Promise.all(cards.map((c) => c.loaded)).then(() => {
      if (mine !== generation) return;
      el.results.setAttribute("aria-busy", "false");
      performance.mark("cxr:thumbnails");
    });
  }

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
