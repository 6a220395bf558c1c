"use strict";
/* The catalog: filter the cards by task category; fill in live state, replicas and demand from GET /v1/models. */
(() => {
  const cards = Array.from(document.querySelectorAll("#catalog .card"));
  const count = document.getElementById("catalog-count");
  const note = document.getElementById("live-note");
  const REFRESH_MS = 5000;
  let needsKey = false; // a 401 stops the polling until a key is entered

  function applyFilter() {
    const chosen = document.querySelector('input[name="category"]:checked');
    const category = chosen ? chosen.value : "";
    let shown = 0;
    for (const card of cards) {
      const match = !category || card.dataset.categories.split(" ").includes(category);
      card.hidden = !match;
      if (match) shown += 1;
    }
    count.textContent = shown === 1 ? "1 model" : shown + " models";
  }

  function field(card, name) {
    return card.querySelector('[data-field="' + name + '"]');
  }

  async function refresh() {
    const answer = await GR.call("GET", "/v1/models");
    needsKey = answer.status === 401;
    if (!answer.ok) {
      note.textContent =
        answer.status === 401
          ? "Enter an API key above to see live state and demand."
          : "Live state is not available right now: " + answer.error;
      note.hidden = false;
      return;
    }
    note.hidden = true;
    const models = new Map(answer.json.data.map((model) => [model.id, model]));
    for (const card of cards) {
      const model = models.get(card.dataset.model);
      if (!model) continue;
      const state = field(card, "state");
      state.textContent = GR.stateText(model.state);
      state.dataset.state = model.state;
      field(card, "replicas").textContent = String(model.replicas);
      field(card, "demand").textContent = String(model.demand);
    }
  }

  document.querySelectorAll('input[name="category"]').forEach((radio) => radio.addEventListener("change", applyFilter));
  GR.onKey(refresh);
  applyFilter();
  refresh();
  setInterval(() => needsKey || refresh(), REFRESH_MS);
})();
