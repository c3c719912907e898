// The prediction form: send the record to POST /predict, show the answer, or each refused field's message beside it.
"use strict";

function recordOf(form) {
  const record = {};
  for (const input of form.querySelectorAll("[data-column]")) {
    const raw = input.value.trim();
    if (input.dataset.kind === "numeric") {
      record[input.dataset.column] = raw === "" ? null : Number(raw);
    } else {
      record[input.dataset.column] = raw === "" ? null : raw;
    }
  }
  return record;
}

function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showErrors(form, detail) {
  const general = [];
  for (const err of Array.isArray(detail) ? detail : [{ msg: String(detail) }]) {
    const column = Array.isArray(err.loc) ? err.loc[err.loc.length - 1] : null;
    const input = [...form.querySelectorAll("[data-column]")].find((el) => el.dataset.column === column);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      document.getElementById(`${input.id}-error`).textContent = err.msg;
    } else {
      general.push(err.msg);
    }
  }
  document.getElementById("form-error").textContent = general.join("; ");
  const first = form.querySelector("[aria-invalid]");
  if (first) first.focus();
}

function showResult(body, elapsed) {
  document.getElementById("prediction").textContent = String(body.prediction);
  document.getElementById("model-name").textContent = body.model_name;
  document.getElementById("model-version").textContent = body.model_version;
  document.getElementById("elapsed").textContent = elapsed.toFixed(0);
  const bars = document.getElementById("probabilities");
  bars.replaceChildren();
  for (const [label, p] of Object.entries(body.probabilities || {})) {
    const row = document.createElement("div");
    row.className = "bar" + (label === String(body.prediction) ? " chosen" : "");
    row.setAttribute("role", "listitem");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(100 * p).toFixed(1)}%`;
    row.append(name, fill, value);
    bars.append(row);
  }
  const result = document.getElementById("result");
  result.hidden = false;
  result.scrollIntoView({ block: "nearest" });
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("predict-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const started = performance.now();
    let response;
    try {
      response = await fetch("/predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(recordOf(form)),
      });
    } catch (e) {
      showErrors(form, `The API did not answer (${e}); is it running?`);
      return;
    }
    const body = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (response.ok) {
      showResult(body, performance.now() - started);
    } else {
      document.getElementById("result").hidden = true;
      showErrors(form, body.detail);
    }
  });
});
