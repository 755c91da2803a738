// The tunelab serve page: plain DOM, no build step. Every text from a model or a user goes in through
// textContent (never innerHTML). The API key lives in `state.key` only: not in storage, not in the URL.
"use strict";

const state = { key: "", models: [], model: null, busy: false };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function setStatus(message, kind) {
  const status = $("status");
  status.textContent = message;
  status.className = kind || "";
}

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

async function api(path, options) {
  const response = await fetch(path, options || { headers: headers(false) });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.error) message = body.error + (body.field ? " (field: " + body.field + ")" : "");
    } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

// ---- models -------------------------------------------------------------------------------------
async function loadModels() {
  const select = $("model");
  try {
    const body = await (await api("/v1/models")).json();
    state.models = body.models;
    select.replaceChildren(...body.models.map((m) => el("option", { value: m.name, text: m.name + " — " + m.task })));
    select.disabled = body.models.length === 0;
    $("key-help").textContent = state.key ? "Key accepted. It is kept in this tab's memory only."
      : "Kept in this tab's memory only: never stored, gone when the tab closes.";
    if (!body.models.length) setStatus("No model is served to this key.", "error");
    else { setStatus(""); await chooseModel(body.models[0].name); }
  } catch (error) {
    select.replaceChildren();
    select.disabled = true;
    $("run").disabled = true;
    if (error.status === 401) {
      setStatus(state.key ? "The API key was rejected (401)." : "This server needs an API key.", "error");
      $("key").setAttribute("aria-invalid", state.key ? "true" : "false");
      $("key").focus();
    } else setStatus("Could not list the models: " + error.message, "error");
  }
}

function view(model) {
  // how a prediction reads best, from the shape of the task's output schema
  const props = (model.output_schema && model.output_schema.properties) || {};
  if (model.streams) return "text";
  if ("entities" in props) return "entities";
  if ("answer" in props) return "answer";
  if ("e1" in props) return "relation";
  if ("scores" in props || "label" in props || "labels" in props) return "labels";
  return "json";
}

function textFields(model) {
  // the string (or string-or-null) fields of the input schema, in order: one text box each
  const schema = model.input_schema || {};
  const props = schema.properties || {};
  const isText = (p) => p.type === "string" || (p.anyOf || []).some((a) => a.type === "string");
  const names = Object.keys(props).filter((name) => isText(props[name]));
  return names.length ? names : ["input"];  // e.g. a dialogue: a plain text is the user's turn
}

function mediaKind(model, field) {
  // "image" or "audio" when the field holds a file's content (sent as a data URI), else undefined
  return (model.media || {})[field];
}

function fileField(field, kind) {
  // a file picker for an image or audio field, with a preview of the chosen file
  const input = el("input", { id: "in-" + field, name: field, type: "file", accept: kind + "/*" });
  const preview = el(kind === "image" ? "img" : "audio", { class: "preview", alt: "", hidden: "" });
  if (kind === "audio") preview.setAttribute("controls", "");
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.hidden = !file;
    if (file) preview.src = URL.createObjectURL(file);
  });
  return el("div", { class: "field" }, el("label", { for: "in-" + field, text: field.replace(/_/g, " ") + " (" + kind + " file)" }),
    input, preview);
}

async function chooseModel(name) {
  const model = state.models.find((m) => m.name === name);
  state.model = model;
  $("model").value = name;
  const fields = textFields(model);
  $("fields").replaceChildren(...fields.map((field, i) => mediaKind(model, field) ? fileField(field, mediaKind(model, field)) :
    el("div", { class: "field" },
      el("label", { for: "in-" + field, text: field.replace(/_/g, " ") }),
      el("textarea", { id: "in-" + field, name: field, rows: i === fields.length - 1 ? "5" : "2", spellcheck: "false" }))));
  $("relation-tools").hidden = view(model) !== "relation";
  if (view(model) === "relation") $("in-" + fields[0]).placeholder = "The <e1>company</e1> fabricates plastic <e2>chairs</e2>.";
  $("run").textContent = model.streams ? "Generate" : "Predict";
  $("explain-tools").hidden = model.streams || !["labels", "relation", "entities", "answer"].includes(view(model));
  $("run").disabled = false;
  $("result").replaceChildren();
  await showCard(model);
}

// ---- the model card -----------------------------------------------------------------------------
async function showCard(model) {
  const body = $("card-body");
  body.replaceChildren(el("p", { class: "help", text: "Loading the card…" }));
  try {
    const card = await (await api("/v1/models/" + encodeURIComponent(model.name) + "/card")).json();
    if (state.model !== model) return;
    const facts = [["task", card.task], ["strategy", card.strategy], ["method", card.method],
      ["base model", card.base_model], ["weights", card.model_format], ["runtime", card.runtime],
      ["parameters", card.parameters ? Number(card.parameters).toLocaleString() : null],
      ["labels", (card.labels || []).join(", ")], ["created", card.created]];
    const list = el("dl", { class: "facts" });
    for (const [name, value] of facts) if (value) list.append(el("dt", { text: name }), el("dd", { text: String(value) }));
    const parts = [list];
    for (const [split, values] of Object.entries(card.metrics || {})) {
      const rows = Object.entries(values).map(([k, v]) => el("tr", {}, el("th", { scope: "row", text: k }),
        el("td", { text: typeof v === "number" ? v.toFixed(4) : String(v) })));
      parts.push(el("table", { class: "metrics" }, el("caption", { text: split + " metrics" }), el("tbody", {}, ...rows)));
    }
    body.replaceChildren(...parts);
    for (const plot of card.plots || []) {
      const blob = await (await api("/v1/models/" + encodeURIComponent(model.name) + "/plots/" + encodeURIComponent(plot))).blob();
      if (state.model !== model) return;
      body.append(el("figure", {}, el("img", { src: URL.createObjectURL(blob), alt: plot.replace(/_/g, " ").replace(/\.png$/, "") }),
        el("figcaption", { text: plot.replace(/_/g, " ").replace(/\.png$/, "") })));
    }
  } catch (error) {
    body.replaceChildren(el("p", { class: "error", text: "Could not load the card: " + error.message }));
  }
}

// ---- inputs and predictions ---------------------------------------------------------------------
function dataUri(file) {
  // the file's content as a base64 data URI: the server reads images and audio only this way, never by path
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("could not read " + file.name));
    reader.readAsDataURL(file);
  });
}

async function readInput(model) {
  const fields = textFields(model);
  const values = {};
  for (const field of fields) {
    const box = $("in-" + field);
    values[field] = mediaKind(model, field) ? (box.files[0] ? await dataUri(box.files[0]) : "") : box.value;
  }
  const filled = fields.filter((f) => values[f].trim());
  if (!filled.length) throw new Error(fields.some((f) => mediaKind(model, f)) ? "Give the inputs first." : "Type or paste some text first.");
  const missing = fields.filter((f) => mediaKind(model, f) && !values[f]);
  if (missing.length) throw new Error("Choose a file for " + missing.join(", ") + ".");
  if (filled.length === 1 && filled[0] === fields[0] && !mediaKind(model, fields[0])) return values[fields[0]];  // a plain text
  const record = {};
  for (const f of filled) record[f] = values[f];
  return record;
}

function bars(scores, chosen) {
  const entries = Object.entries(scores).sort((a, b) => b[1] - a[1]).slice(0, 12);
  return el("ol", { class: "bars", "aria-label": "scores per label" }, ...entries.map(([label, score]) => {
    const fill = el("span", { class: "fill" });
    fill.style.width = Math.max(0, Math.min(100, score * 100)).toFixed(1) + "%";
    const percent = (score * 100).toFixed(1) + "%";
    return el("li", { class: chosen.includes(label) ? "chosen" : "" },
      el("span", { class: "name", text: label }),
      el("span", { class: "bar", role: "img", "aria-label": label + " " + percent }, fill),
      el("span", { class: "value", text: percent }));
  }));
}

function colour(type) {
  let hash = 0;
  for (const ch of type) hash = (hash * 31 + ch.charCodeAt(0)) % 360;
  return "hsl(" + hash + " 70% 85%)";
}

function highlighted(text, spans) {
  // text with each {start, end, type} span in a <mark> labelled by its type
  const out = el("p", { class: "marked" });
  let at = 0;
  for (const span of [...spans].sort((a, b) => a.start - b.start)) {
    if (span.start < at || span.end > text.length) continue;
    out.append(text.slice(at, span.start));
    const mark = el("mark", { class: "span", "data-type": span.type },
      text.slice(span.start, span.end), el("span", { class: "tag", text: " " + span.type }));
    mark.style.background = colour(span.type);
    out.append(mark);
    at = span.end;
  }
  out.append(text.slice(at));
  return out;
}

const renderers = {
  labels(prediction) {
    if (prediction.scores) return bars(prediction.scores, prediction.labels || [prediction.label]);
    if (prediction.labels) return el("p", { class: "answer", text: prediction.labels.join(", ") || "(no label)" });
    return el("p", { class: "answer", text: "score " + prediction.score });
  },
  entities(prediction, input) {
    const text = typeof input === "string" ? input : Object.values(input)[0];
    const found = prediction.entities.map((e) => el("li", { text: e.type + ": " + e.text + (e.score != null ? " (" + (e.score * 100).toFixed(0) + "%)" : "") }));
    return el("div", {}, highlighted(text, prediction.entities),
      found.length ? el("ul", { class: "entities", "aria-label": "entities found" }, ...found) : el("p", { class: "help", text: "No entities found." }));
  },
  answer(prediction, input) {
    const context = typeof input === "string" ? "" : input[textFields(state.model)[1]] || "";
    if (prediction.start === null || prediction.start === undefined) return el("p", { class: "answer", text: "No answer in the context." });
    return el("div", {}, el("p", { class: "answer" }, "Answer: ", el("strong", { text: prediction.answer }),
      " (" + (prediction.score * 100).toFixed(1) + "%)"),
    highlighted(context, [{ start: prediction.start, end: prediction.end, type: "answer" }]));
  },
  relation(prediction, input) {
    const text = typeof input === "string" ? input : Object.values(input)[0];
    const spans = [];
    const plain = text.replace(/<(\/?)(e[12])>/g, (tag, close, name, offset) => {
      if (!close) spans.push({ type: name, start: offset });
      else { const span = spans.find((s) => s.type === name && s.end === undefined); if (span) span.end = offset; }
      return "";
    });
    // offsets above are in the marked text: map them to the plain text by removing the tags before each
    const shift = (offset) => (text.slice(0, offset).match(/<\/?e[12]>/g) || []).join("").length;
    const mapped = spans.filter((s) => s.end !== undefined).map((s) => ({ type: s.type, start: s.start - shift(s.start), end: s.end - shift(s.end) }));
    return el("div", {}, highlighted(plain, mapped),
      el("p", { class: "answer" }, el("strong", { text: prediction.e1 }), " → ", el("em", { text: prediction.label }), " → ",
        el("strong", { text: prediction.e2 }), " (" + (prediction.score * 100).toFixed(1) + "%)"),
      bars(prediction.scores, [prediction.label]));
  },
  json(prediction) {
    return el("pre", { class: "json", text: JSON.stringify(prediction, null, 2) });
  },
};

async function predict(model, input) {
  const response = await api("/v1/models/" + encodeURIComponent(model.name) + "/predict",
    { method: "POST", headers: headers(true), body: JSON.stringify({ inputs: input }) });
  const prediction = (await response.json()).predictions[0];
  $("result").replaceChildren(renderers[view(model)](prediction, input));
  setStatus("Done.");
}

async function generate(model, input) {
  // Server-Sent Events over fetch (EventSource cannot POST or send the key): text appears as it is made
  const out = el("pre", { class: "generated", "aria-label": "generated text" });
  $("result").replaceChildren(out);
  const response = await api("/v1/models/" + encodeURIComponent(model.name) + "/generate",
    { method: "POST", headers: headers(true), body: JSON.stringify({ input: input, stream: true }) });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") { setStatus("Done."); return; }
      const parsed = JSON.parse(data);
      if (event.startsWith("event: error")) throw new Error("the model failed (" + parsed.error + "), request " + parsed.request_id);
      out.textContent += parsed.text;
    }
  }
  setStatus("Done.");
}

async function busy(button, message, work) {
  // one request at a time: read the input, disable the button, report errors in the status line
  const model = state.model;
  if (!model || state.busy) return;
  let input;
  try { input = await readInput(model); } catch (error) { setStatus(error.message, "error"); return; }
  state.busy = true;
  button.disabled = true;
  setStatus(message);
  try {
    await work(model, input);
  } catch (error) {
    setStatus((error.status === 401 ? "The API key was rejected: " : "Error: ") + error.message, "error");
  } finally {
    state.busy = false;
    button.disabled = false;
  }
}

function run(event) {
  event.preventDefault();
  const streams = state.model && state.model.streams;
  return busy($("run"), streams ? "Generating…" : "Predicting…", (model, input) =>
    (model.streams ? generate(model, input) : predict(model, input)));
}

function heatmap(explanation) {
  // the text with each word shaded by its attribution: red towards the label, blue against
  const values = explanation.words.map((w) => w.attribution).filter((v) => v !== null);
  const scale = Math.max(...values.map(Math.abs), 1e-9);
  const text = explanation.text;
  const out = el("p", { class: "marked", "aria-label": "words shaded by how much they led to " + explanation.target });
  let at = 0;
  for (const w of explanation.words) {
    out.append(text.slice(at, w.start));
    const span = el("span", { class: "heat", title: w.attribution === null ? "not seen by the model" : (w.attribution > 0 ? "+" : "") + w.attribution.toFixed(4) }, w.word);
    if (w.attribution !== null) {
      const alpha = (Math.abs(w.attribution) / scale).toFixed(2);
      span.style.background = w.attribution > 0 ? "rgba(214, 39, 40, " + alpha + ")" : "rgba(31, 119, 180, " + alpha + ")";
    }
    out.append(span);
    at = w.end;
  }
  out.append(text.slice(at));
  const top = [...explanation.words].filter((w) => w.attribution !== null).sort((a, b) => b.attribution - a.attribution).slice(0, 3);
  const delta = explanation.convergence_delta !== undefined ? " · convergence delta " + explanation.convergence_delta : "";
  const words = explanation.words.length ? [
    el("p", { class: "help", text: "Why " + explanation.target + " (" + (explanation.score * 100).toFixed(1) + "%), by " + explanation.method + delta + ": red words raise it, blue words lower it." }),
    out,
    el("p", { class: "help", text: "Strongest: " + top.map((w) => w.word).join(", ") })] : [];
  return el("div", { class: "explanation" }, ...words,
    ...Object.entries(explanation.images || {}).map(([column, grid]) => regionMap(column, grid, explanation)),
    explanation.note ? el("p", { class: "error", text: explanation.note }) : null);
}

function regionMap(column, grid, explanation) {
  // the uploaded image under a grid of cells shaded by occlusion: red regions raise the target, blue lower it
  const values = grid.attributions.flat();
  const scale = Math.max(...values.map(Math.abs), 1e-9);
  const preview = $("fields").querySelector("#in-" + CSS.escape(column) + " ~ img.preview");
  const cells = el("div", { class: "cells", role: "img", "aria-label": "regions of " + column + " shaded by how much they led to " + explanation.target });
  cells.style.gridTemplateColumns = "repeat(" + grid.cols + ", 1fr)";
  for (const row of grid.attributions) for (const value of row) {
    const cell = el("span", { class: "cell", title: (value > 0 ? "+" : "") + value.toFixed(4) });
    const alpha = (0.75 * Math.abs(value) / scale).toFixed(2);
    cell.style.background = value > 0 ? "rgba(214, 39, 40, " + alpha + ")" : "rgba(31, 119, 180, " + alpha + ")";
    cells.append(cell);
  }
  const picture = el("div", { class: "regions" }, preview ? el("img", { src: preview.src, alt: column }) : null, cells);
  return el("figure", { class: "region-map" }, picture,
    el("figcaption", { class: "help", text: column + ": each of " + grid.rows + "×" + grid.cols + " regions covered in turn (occlusion); red regions raise " + explanation.target + ", blue lower it." }));
}

function explain() {
  return busy($("explain"), "Explaining…", async (model, input) => {
    const response = await api("/v1/models/" + encodeURIComponent(model.name) + "/explain",
      { method: "POST", headers: headers(true), body: JSON.stringify({ input: input, method: $("method").value }) });
    const old = $("result").querySelector(".explanation");
    if (old) old.remove();
    $("result").append(heatmap((await response.json()).explanation));
    setStatus("Done.");
  });
}

function markSelection(name) {
  // wrap the selected part of the relation text box in <e1>…</e1> (or e2), replacing an earlier mark
  const box = $("fields").querySelector("textarea");
  const { selectionStart: a, selectionEnd: b } = box;
  if (a === b) { setStatus("Select the words of entity " + name.slice(1) + " in the text first.", "error"); return; }
  const open = "<" + name + ">", close = "</" + name + ">";
  const before = box.value.slice(0, a), middle = box.value.slice(a, b), after = box.value.slice(b);
  const strip = (s) => s.split(open).join("").split(close).join("");
  box.value = strip(before) + open + strip(middle) + close + strip(after);
  box.focus();
  setStatus("");
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    $("key").value = "";  // the field is cleared; the key lives in memory only
    loadModels();
  });
  $("model").addEventListener("change", (event) => chooseModel(event.target.value));
  $("predict-form").addEventListener("submit", run);
  $("predict-form").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) run(event);  // Ctrl+Enter runs
  });
  $("explain").addEventListener("click", explain);
  $("mark-e1").addEventListener("click", () => markSelection("e1"));
  $("mark-e2").addEventListener("click", () => markSelection("e2"));
  loadModels();
});
