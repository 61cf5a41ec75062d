// Describe a vector: paste or upload its numbers, pick a layer, and read what the model says at each scale
// (POST /api/describe-vector). The chosen scale (by self-similarity and entropy) is marked.
"use strict";

(() => {
  const $v = (id) => document.getElementById(id);

  function cell(tag, text, cls) {
    const node = document.createElement(tag);
    node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  function show(records) {
    const out = $v("vector-output");
    out.replaceChildren();
    if (!records.length) return;
    out.append(cell("p", `logit lens: ${records[0].logit_lens} · norm ${records[0].norm.toPrecision(3)}`, "muted"));
    const table = document.createElement("table");
    table.className = "vector-table";
    const head = document.createElement("tr");
    ["", "scale", "text", "self-similarity", "entropy"].forEach((h) => head.append(cell("th", h)));
    table.append(head);
    for (const r of records) {
      const row = document.createElement("tr");
      if (r.chosen) row.className = "chosen";
      row.append(cell("td", r.chosen ? "★" : ""), cell("td", String(Number(r.scale.toPrecision(4)))),
        cell("td", r.text), cell("td", r.self_similarity.toFixed(3)), cell("td", r.entropy.toFixed(3)));
      table.append(row);
    }
    out.append(table);
  }

  async function run() {
    const out = $v("vector-output");
    const layerText = $v("vector-layer").value.trim();
    const body = {
      vector: $v("vector-text").value,
      layer: layerText === "embeddings" ? "embeddings" : Number(layerText),
      scales: $v("vector-scales").value.trim() === "auto" ? "auto"
        : $v("vector-scales").value.split(/[\s,]+/).filter(Boolean).map(Number),
      max_new_tokens: Number($v("vector-tokens").value || 16),
    };
    const model = document.getElementById("model");
    if (model && model.value) body.model = model.value;
    out.dataset.state = "running";
    out.replaceChildren(cell("p", "describing…", "muted"));
    try {
      const response = await fetch("/api/describe-vector", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw Object.assign(new Error(data.error || `${response.status}`), { hint: data.hint });
      out.dataset.state = "done";
      show(data);
    } catch (err) {
      out.dataset.state = "error";
      out.replaceChildren(cell("p", err.message, "error"), cell("p", err.hint || "", "muted"));
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (!$v("vector-run")) return;
    $v("vector-run").addEventListener("click", run);
    $v("vector-file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (file) $v("vector-text").value = await file.text();
    });
  });
})();
