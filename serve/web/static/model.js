"use strict";
/* A model's page: live state (with "waking up…" while a cold model starts), "tell us you want it",
   and the playground, which calls the public API and draws the answer over the user's image.
   Every text that comes from data is set with textContent or as an SVG attribute, never as HTML. */
(() => {
  const page = GR.page;
  const $ = (id) => document.getElementById(id);
  const tasks = new Map(page.tasks.map((task) => [task.name, task]));
  const NOT_READY = ["cold", "starting", "pending"];
  const COLOURS = ["#c62828", "#1565c0", "#2e7d32", "#6a1b9a", "#e65100", "#00838f", "#ad1457", "#4e342e"];
  const WAKING_AFTER_MS = 1500;

  let model = null; // the latest GET /v1/models/{id}
  let running = false;
  let needsKey = false;
  let image = null; // {send: what the API gets, name}
  let size = null; // the image's natural size in pixels
  let region = null; // {x1, y1, x2, y2} in pixels
  let drag = null;

  // ----- live state -----

  async function refresh() {
    const answer = await GR.call("GET", "/v1/models/" + GR.modelPath(page.id));
    needsKey = answer.status === 401;
    const note = $("live-note");
    if (!answer.ok) {
      note.textContent =
        answer.status === 401
          ? "Enter an API key above to see live state and to run the playground."
          : "Live state is not available right now: " + answer.error;
      note.hidden = false;
      return;
    }
    note.hidden = true;
    model = answer.json;
    const state = $("state");
    state.textContent = GR.stateText(model.state);
    state.dataset.state = model.state;
    $("replicas").textContent = GR.replicasText(model.replicas) + " running";
    $("demand").textContent = String(model.demand);
    const reason = $("state-reason");
    reason.textContent = model.state_reason || "";
    reason.hidden = !model.state_reason || model.state === "ready";
  }

  function poll() {
    const wait = running ? 1000 : 4000;
    setTimeout(async () => {
      if (!needsKey) await refresh();
      poll();
    }, wait);
  }

  // ----- tell us you want it -----

  const want = $("want");
  if (want) {
    want.addEventListener("click", async () => {
      want.disabled = true;
      const answer = await GR.call("POST", "/v1/models/" + GR.modelPath(page.id) + "/interest");
      want.disabled = false;
      if (!answer.ok) {
        $("want-status").textContent = "Not recorded: " + answer.error;
        return;
      }
      $("demand").textContent = String(answer.json.demand);
      $("want-status").textContent = "Thanks, noted. " + answer.json.demand + " requests for this model so far.";
    });
  }

  // ----- the image -----

  const preview = $("preview");
  const overlay = $("overlay");
  const stage = $("stage");

  function status(text, isError) {
    const line = $("run-status");
    line.textContent = text;
    line.classList.toggle("error", Boolean(isError));
  }

  function setImage(send, name) {
    image = null;
    size = null;
    preview.onload = () => {
      size = { w: preview.naturalWidth, h: preview.naturalHeight };
      image = { send, name };
      overlay.setAttribute("viewBox", "0 0 " + size.w + " " + size.h);
      stage.style.setProperty("--aspect", String(size.w / size.h)); // at most 70 % of the window's height
      overlay.removeAttribute("hidden"); // an SVG element has no `hidden` property
      stage.classList.add("has-image");
      $("stage-empty").hidden = true;
      $("image-info").textContent = name + " · " + size.w + " × " + size.h + " px";
      setRegion(null);
      clearResults();
      status("Image ready.");
    };
    preview.onerror = () => {
      status("That image could not be loaded by the browser.", true);
    };
    preview.hidden = false;
    preview.src = send;
  }

  function readFile(file) {
    if (!file) return;
    if (!file.type.startsWith("image/")) {
      status("That file is not an image.", true);
      return;
    }
    const reader = new FileReader();
    reader.onload = () => setImage(String(reader.result), file.name || "pasted image");
    reader.onerror = () => status("The file could not be read.", true);
    reader.readAsDataURL(file);
  }

  $("image-file").addEventListener("change", (event) => readFile(event.target.files[0]));
  $("load-url").addEventListener("click", () => {
    const url = $("image-url").value.trim();
    if (!/^https?:\/\/\S+$/i.test(url)) {
      status("Enter an http(s) URL of an image.", true);
      return;
    }
    setImage(url, url);
  });
  $("image-url").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      $("load-url").click();
    }
  });
  stage.addEventListener("dragover", (event) => {
    event.preventDefault();
    stage.classList.add("dragover");
  });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
  stage.addEventListener("drop", (event) => {
    event.preventDefault();
    stage.classList.remove("dragover");
    readFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const file = Array.from(event.clipboardData ? event.clipboardData.files : []).find((f) => f.type.startsWith("image/"));
    if (file) readFile(file);
  });

  // ----- the task and its inputs -----

  function currentTask() {
    return tasks.get($("task").value);
  }

  const TEXT_LABELS = {
    classifications: ["Labels, one per line", "Each label gets its own sigmoid probability."],
    scores: ["Texts, one per line", "Each text is scored against the image (sigmoid)."],
    embeddings: ["Texts, one per line", "One embedding per line."],
  };

  function taskChanged() {
    const task = currentTask();
    const takesText = task.input === "text" || task.input === "optional_text";
    $("text-field").hidden = !takesText;
    if (takesText) {
      const [label, hint] = TEXT_LABELS[task.endpoint] ||
        (task.input === "optional_text" ? ["Prompt (optional)", "Leave empty for the default prompt."] : ["Text input", ""]);
      $("text-label").textContent = label;
      $("text-hint").textContent = hint;
      $("text-input").rows = task.endpoint === "chat" ? 2 : 4;
    }
    $("region-field").hidden = task.input !== "region";
    $("image-field").hidden = task.endpoint === "embeddings" && task.input === "text";
    overlay.classList.toggle("drawing", task.input === "region");
    if (task.input !== "region") setRegion(null);
  }
  $("task").addEventListener("change", taskChanged);

  // ----- the region: drag on the image, or type it -----

  const REGION_KEYS = ["x1", "y1", "x2", "y2"];

  function toImage(event) {
    const box = overlay.getBoundingClientRect();
    const clamp = (value, high) => Math.min(Math.max(value, 0), high);
    return {
      x: clamp(((event.clientX - box.left) / box.width) * size.w, size.w),
      y: clamp(((event.clientY - box.top) / box.height) * size.h, size.h),
    };
  }

  function drawRegion() {
    let rect = overlay.querySelector("rect.region");
    if (!region) {
      if (rect) rect.remove();
      return;
    }
    if (!rect) {
      rect = GR.svg("rect", { class: "region" });
      overlay.append(rect);
    }
    rect.setAttribute("x", region.x1);
    rect.setAttribute("y", region.y1);
    rect.setAttribute("width", Math.max(region.x2 - region.x1, 0));
    rect.setAttribute("height", Math.max(region.y2 - region.y1, 0));
  }

  function setRegion(value, fillInputs = true) {
    region = value;
    if (fillInputs) {
      for (const key of REGION_KEYS) $("region-" + key).value = value ? String(value[key]) : "";
    }
    drawRegion();
  }

  overlay.addEventListener("pointerdown", (event) => {
    if (!size || currentTask().input !== "region") return;
    event.preventDefault();
    overlay.setPointerCapture(event.pointerId);
    drag = toImage(event);
  });
  overlay.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const here = toImage(event);
    setRegion({
      x1: Math.round(Math.min(drag.x, here.x)),
      y1: Math.round(Math.min(drag.y, here.y)),
      x2: Math.round(Math.max(drag.x, here.x)),
      y2: Math.round(Math.max(drag.y, here.y)),
    });
  });
  const endDrag = () => {
    if (!drag) return;
    drag = null;
    if (region && (region.x2 - region.x1 < 1 || region.y2 - region.y1 < 1)) setRegion(null);
    if (region) status("Region " + REGION_KEYS.map((k) => region[k]).join(", ") + " selected.");
  };
  overlay.addEventListener("pointerup", endDrag);
  overlay.addEventListener("pointercancel", endDrag);
  for (const key of REGION_KEYS) {
    $("region-" + key).addEventListener("input", () => {
      const values = REGION_KEYS.map((k) => $("region-" + k).value.trim());
      if (values.some((v) => v === "" || !Number.isFinite(Number(v)))) {
        setRegion(null, false);
        return;
      }
      const [x1, y1, x2, y2] = values.map(Number);
      setRegion({ x1, y1, x2, y2 }, false);
    });
  }

  // ----- running -----

  function lines(text) {
    return text.split("\n").map((line) => line.trim()).filter(Boolean);
  }

  /* The API call for the chosen task: {path, body} or {error}. */
  function buildRequest(task) {
    const text = $("text-input").value;
    const needsImage = !(task.endpoint === "embeddings" && task.input === "text");
    if (needsImage && !image) return { error: "Choose an image first." };
    if (task.input === "text" && !text.trim()) return { error: $("text-label").textContent + ": enter some text." };
    if (task.input === "region") {
      if (!region) return { error: "Drag a region on the image, or type x1, y1, x2, y2." };
      if (!(region.x1 < region.x2 && region.y1 < region.y2)) return { error: "The region needs x1 < x2 and y1 < y2." };
    }
    switch (task.endpoint) {
      case "chat": {
        const body = { image_url: image.send };
        if (text.trim() && (task.input === "text" || task.input === "optional_text")) body.text_input = text.trim();
        if (task.input === "region") body.region = { ...region };
        const path = "/v1/vision/" + encodeURIComponent(page.deployment) + "/" + encodeURIComponent(task.name);
        return { path, body };
      }
      case "classifications":
        return { path: "/v1/classifications", body: { model: page.id, image: image.send, labels: lines(text) } };
      case "scores":
        return { path: "/v1/scores", body: { model: page.id, images: [image.send], texts: lines(text) } };
      case "embeddings":
        if (task.input === "text") return { path: "/v1/embeddings", body: { model: page.id, input: lines(text) } };
        return { path: "/v1/embeddings", body: { model: page.id, input: [image.send], modality: "image" } };
      default:
        return { error: "This page cannot run '" + task.endpoint + "' tasks." };
    }
  }

  /* A copy of a JSON value with long data: URLs shortened, for display. */
  function shortened(value) {
    if (typeof value === "string") {
      return value.startsWith("data:") && value.length > 96
        ? value.slice(0, 48) + "…(" + value.length + " characters)"
        : value;
    }
    if (Array.isArray(value)) {
      if (value.length > 64 && value.every((item) => typeof item === "number")) {
        return value.slice(0, 8).concat(["…(" + value.length + " numbers)"]);
      }
      return value.map(shortened);
    }
    if (value && typeof value === "object") {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, shortened(v)]));
    }
    return value;
  }

  function showWaking(on) {
    $("waking").hidden = !on;
  }

  $("run").addEventListener("click", run);

  async function run() {
    if (running) return;
    const task = currentTask();
    const request = buildRequest(task);
    if (request.error) {
      status(request.error, true);
      return;
    }
    running = true;
    $("run").disabled = true;
    status("Running " + task.name + "…");
    clearResults();
    $("output").hidden = false;
    $("latency").textContent = "…";
    $("usage").textContent = "";
    $("cold-note").hidden = true;
    $("result-json").textContent = "";
    $("request-json").textContent =
      "POST " + request.path + "\n" + JSON.stringify(shortened(request.body), null, 2);
    if (model && NOT_READY.includes(model.state)) showWaking(true);
    // A model can go cold between two polls: say so if the answer takes long and it is not ready.
    const slow = setTimeout(() => {
      if (running && (!model || model.state !== "ready")) showWaking(true);
    }, WAKING_AFTER_MS);
    const answer = await GR.call("POST", request.path, request.body);
    clearTimeout(slow);
    running = false;
    $("run").disabled = false;
    showWaking(false);
    $("latency").textContent = Math.round(answer.ms) + " ms";
    $("cold-note").hidden = answer.headers.get("x-cold-start") !== "true";
    $("result-json").textContent = answer.json === null ? "" : JSON.stringify(shortened(answer.json), null, 2);
    if (!answer.ok) {
      $("usage").textContent = "HTTP " + answer.status;
      status(answer.error, true);
      return;
    }
    $("usage").textContent = usageText(answer.json.usage);
    status("Done: " + task.name + ".");
    render(task, answer.json, request.body);
    refresh();
  }

  function usageText(usage) {
    if (!usage) return "usage: not reported by this endpoint";
    const parts = [];
    if (usage.images) parts.push(usage.images + (usage.images === 1 ? " image" : " images"));
    if (usage.prompt_tokens) parts.push(usage.prompt_tokens + " prompt tokens");
    if (usage.completion_tokens) parts.push(usage.completion_tokens + " completion tokens");
    return "usage: " + (parts.join(", ") || "nothing counted");
  }

  // ----- rendering the answer -----

  function clearResults() {
    overlay.querySelectorAll("g.result").forEach((node) => node.remove());
    $("result-view").replaceChildren();
  }

  function labelSize() {
    return Math.max(10, Math.round(Math.min(size.w, size.h) / 24));
  }

  function drawLabel(group, text, x, y, colour) {
    if (!text) return;
    const MAX_CHARS = 32; // the whole label is in the JSON below
    const shown = text.length > MAX_CHARS ? text.slice(0, MAX_CHARS - 1) + "…" : text;
    const fontSize = labelSize();
    const width = Math.min(shown.length * fontSize * 0.6 + fontSize * 0.6, size.w);
    x = Math.max(Math.min(x, size.w - width), 0); // inside the picture
    const top = Math.max(y - fontSize * 1.3, 0);
    group.append(
      GR.svg("rect", { class: "label-bg", x, y: top, width, height: fontSize * 1.3, fill: colour }),
    );
    const label = GR.svg("text", { class: "label", x: x + fontSize * 0.3, y: top + fontSize, "font-size": fontSize });
    label.textContent = shown;
    const title = GR.svg("title");
    title.textContent = text;
    label.append(title);
    group.append(label);
  }

  function drawBox(box, colour, kind = "box") {
    const group = GR.svg("g", { class: "result", "data-kind": kind });
    group.append(GR.svg("rect", { class: "box", x: box.x, y: box.y, width: box.w, height: box.h, stroke: colour }));
    drawLabel(group, box.label, box.x, box.y, colour);
    overlay.append(group);
  }

  function drawShape(points, label, colour, kind) {
    if (!points || points.length < 3) return;
    const group = GR.svg("g", { class: "result", "data-kind": kind });
    const list = points.map((p) => p.x + "," + p.y).join(" ");
    group.append(GR.svg("polygon", { class: "shape", points: list, fill: colour, stroke: colour }));
    const top = points.reduce((best, p) => (p.y < best.y ? p : best), points[0]);
    drawLabel(group, label, top.x, top.y, colour);
    overlay.append(group);
  }

  function render(task, json, body) {
    const view = $("result-view");
    if (task.endpoint === "classifications") {
      view.append(bars(json.data.map((row) => [row.label, row.score]), "Sigmoid probability per label"));
      return;
    }
    if (task.endpoint === "scores") {
      const texts = body.texts;
      view.append(bars(json.data[0].map((score, j) => [texts[j], score]), "Sigmoid probability that the image matches"));
      return;
    }
    if (task.endpoint === "embeddings") {
      view.append(embeddingStats(json.data, body));
      return;
    }
    drawResults(json.results, view);
  }

  function bars(rows, title) {
    const list = GR.el("ul", { class: "bars", "aria-label": title });
    for (const [label, score] of rows) {
      const percent = Math.max(0, Math.min(1, Number(score))) * 100;
      const bar = GR.el("div", { class: "bar" });
      bar.style.width = percent.toFixed(2) + "%";
      list.append(
        GR.el(
          "li",
          { class: "bar-row" },
          GR.el("span", { class: "bar-label", text: label }),
          GR.el("span", { class: "bar-track", role: "presentation" }, bar),
          GR.el("span", { class: "bar-value", text: (percent < 0.1 && percent > 0 ? percent.toExponential(1) : percent.toFixed(1)) + " %" }),
        ),
      );
    }
    return GR.el("div", {}, GR.el("p", { class: "muted", text: title }), list);
  }

  function embeddingStats(data, body) {
    const wrap = GR.el("div", { class: "embeddings" });
    data.forEach((item, i) => {
      const vector = item.embedding;
      const norm = Math.sqrt(vector.reduce((sum, v) => sum + v * v, 0));
      const input = Array.isArray(body.input) && body.modality !== "image" ? body.input[i] : "image";
      wrap.append(
        GR.el(
          "dl",
          { class: "stats", "data-embedding": i },
          GR.el("dt", { text: "input" }), GR.el("dd", { text: input }),
          GR.el("dt", { text: "dimensions" }), GR.el("dd", { class: "dims", text: String(vector.length) }),
          GR.el("dt", { text: "L2 norm" }), GR.el("dd", { class: "norm", text: norm.toFixed(4) }),
          GR.el("dt", { text: "first values" }),
          GR.el("dd", { text: vector.slice(0, 6).map((v) => v.toFixed(4)).join(", ") + ", …" }),
        ),
      );
    });
    return wrap;
  }

  function drawResults(results, view) {
    if (typeof results === "string") {
      view.append(GR.el("p", { class: "answer", id: "answer", text: results }));
      return;
    }
    if (!results || typeof results !== "object") return;
    if (Array.isArray(results.entities)) {
      drawEntities(results, view);
      return;
    }
    let count = 0;
    (results.bboxes || []).forEach((box, i) => {
      drawBox(box, COLOURS[i % COLOURS.length]);
      count += 1;
    });
    (results.quad_boxes || []).forEach((quad, i) => {
      drawShape(quad.points, quad.label, COLOURS[i % COLOURS.length], "quad");
      count += 1;
    });
    (results.polygons || []).forEach((polygon, i) => {
      drawShape(polygon.points, polygon.label, COLOURS[i % COLOURS.length], "polygon");
      count += 1;
    });
    view.append(GR.el("p", { class: "answer", id: "answer", text: count === 1 ? "1 shape drawn" : count + " shapes drawn" }));
  }

  /* Kosmos-2: the caption with each entity's phrase highlighted in the colour of its boxes. */
  function drawEntities(results, view) {
    const text = typeof results.text === "string" ? results.text : "";
    const entities = results.entities.map((entity, i) => ({ ...entity, colour: COLOURS[i % COLOURS.length], index: i }));
    const caption = GR.el("p", { class: "answer", id: "answer" });
    let at = 0;
    const spans = entities
      .filter((e) => Array.isArray(e.span) && e.span.length === 2 && e.span[0] >= 0 && e.span[1] <= text.length)
      .sort((a, b) => a.span[0] - b.span[0]);
    for (const entity of spans) {
      const [start, end] = entity.span;
      if (start < at || end <= start) continue;
      caption.append(text.slice(at, start));
      const mark = GR.el("mark", { "data-entity": entity.index, text: text.slice(start, end) });
      mark.style.backgroundColor = entity.colour + "33";
      mark.style.boxShadow = "inset 0 -3px 0 " + entity.colour;
      caption.append(mark);
      at = end;
    }
    caption.append(text.slice(at));
    view.append(caption);
    if (typeof results.answer === "string" && results.answer) {
      view.append(GR.el("p", {}, GR.el("strong", { text: "Answer: " }), results.answer));
    }
    for (const entity of entities) {
      for (const box of entity.bboxes || []) drawBox({ ...box, label: entity.phrase }, entity.colour, "entity");
    }
  }

  // ----- copy buttons of the examples -----

  document.querySelectorAll("button.copy").forEach((button) => {
    button.addEventListener("click", async () => {
      const code = $(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(code);
        button.textContent = "Copied";
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents($(button.dataset.copy));
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => (button.textContent = "Copy"), 2000);
    });
  });

  GR.onKey(() => {
    needsKey = false;
    refresh();
  });
  taskChanged();
  refresh();
  poll();
})();
