"use strict";
/* Shared by every page: the API key (kept in sessionStorage, for this tab only), calls to the public
   API with it, and DOM building that only ever sets text (never HTML) from data. */
const GR = (() => {
  const KEY = "gigarouter.apiKey";
  const root = document.body.dataset.root || "";
  const page = JSON.parse(document.getElementById("page-data").textContent);
  const keyListeners = [];

  function key() {
    try {
      return sessionStorage.getItem(KEY) || "";
    } catch (error) {
      return "";
    }
  }

  function setKey(value) {
    try {
      if (value) sessionStorage.setItem(KEY, value);
      else sessionStorage.removeItem(KEY);
    } catch (error) {
      /* storage refused (private mode): the key lives only in this page */
    }
    keyListeners.forEach((listener) => listener());
  }

  /* A model id as a URL path: its slashes stay, everything else is encoded. */
  function modelPath(id) {
    return id.split("/").map(encodeURIComponent).join("/");
  }

  /* One API call: {ok, status, json, error, ms, headers}. Never throws. */
  async function call(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["content-type"] = "application/json";
    const current = key();
    if (current) headers.authorization = "Bearer " + current;
    const started = performance.now();
    let response;
    try {
      response = await fetch(root + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (error) {
      return {
        ok: false, status: 0, json: null, ms: performance.now() - started, headers: new Headers(),
        error: "The gateway could not be reached (" + error.message + ").",
      };
    }
    let json = null;
    try {
      json = await response.json();
    } catch (error) {
      json = null;
    }
    const ms = performance.now() - started;
    const message = json && json.error && typeof json.error.message === "string" ? json.error.message : null;
    const error = response.ok ? null : message || "HTTP " + response.status;
    if (response.status === 401) askForKey(error);
    return { ok: response.ok, status: response.status, json, error, ms, headers: response.headers };
  }

  /* An element with attributes and children; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  const STATES = {
    cold: "cold (wakes on first request)",
    starting: "starting…",
    pending: "pending (waiting for resources)",
    ready: "ready",
    unavailable: "unavailable",
  };

  function stateText(state) {
    return STATES[state] || String(state);
  }

  function replicasText(count) {
    return count === 1 ? "1 replica" : count + " replicas";
  }

  // ----- the key form -----
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const status = document.getElementById("key-status");

  function showKeyState() {
    status.textContent = key() ? "key set for this tab" : "no key set";
  }

  function askForKey(message) {
    form.hidden = false;
    showKeyState();
    if (message) status.textContent = message;
    if (!key()) input.focus();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    input.value = "";
    setKey(value);
    showKeyState();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    setKey("");
    showKeyState();
  });
  if (!form.hidden) showKeyState();

  return {
    root, page, call, el, svg, key, modelPath, stateText, replicasText,
    onKey: (listener) => keyListeners.push(listener),
  };
})();
