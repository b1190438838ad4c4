// The interactive scales dashboard: reads the JSON in #scales-data, draws on canvases.
// No libraries and no network, so the page opens from the run directory as a file.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("scales-data").textContent);
  const COLOURS = {
    act: "#1f77b4",
    weight: "#17becf",
    act_grad: "#ff7f0e",
    weight_grad: "#d62728",
    update: "#2ca02c",
  };
  const LAYER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const FONT = "11px sans-serif";
  const records = DATA.records;
  const steps = records.map((r) => r.step);
  const layers = DATA.layers;
  const tensors = DATA.tensors;
  const state = { index: records.length - 1, visible: new Set(layers) };

  // The initial step and layers may come from the address (#step=10&layers=block0,head), so a
  // view can be bookmarked and opened as it was.
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("step")) {
    const i = steps.indexOf(Number(params.get("step")));
    if (i >= 0) state.index = i;
  } else if (DATA.initial_step !== null) {
    state.index = Math.max(0, steps.indexOf(DATA.initial_step));
  }
  if (params.has("layers")) {
    state.visible = new Set(params.get("layers").split(",").filter((l) => layers.includes(l)));
  }

  // The first step at which the watchdog alerted on each layer/tensor.
  const alerted = new Map();
  for (const r of DATA.alerts) {
    for (const a of Array.isArray(r.alerts) ? r.alerts : []) {
      const key = `${a.layer}/${a.tensor}`;
      if (typeof r.step === "number" && !(alerted.get(key) <= r.step)) alerted.set(key, r.step);
    }
  }

  const esc = (text) => String(text).replace(/[&<>"]/g,
    (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[ch]);
  const log2 = (v) => (v !== null && v > 0 && isFinite(v) ? Math.log2(v) : null);
  const entry = (record, layer, tensor) => (record.layers[layer] || {})[tensor] || null;

  // One x range for every histogram of the run (and the format ranges), so steps and layers
  // compare at a glance.
  let xLo = DATA.limits.reduce((m, l) => Math.min(m, l.log2), 0) - 2;
  let xHi = DATA.limits.reduce((m, l) => Math.max(m, l.log2), 0) + 2;
  for (const record of records) {
    for (const layer of layers) {
      for (const tensor of tensors) {
        const e = entry(record, layer, tensor);
        if (!e) continue;
        const r = log2(e.rms);
        if (r !== null) { xLo = Math.min(xLo, r - 1); xHi = Math.max(xHi, r + 1); }
        const h = e.log2_hist;
        if (!h) continue;
        h.counts.forEach((c, i) => {
          if (c > 0) { xLo = Math.min(xLo, h.min_exp + i); xHi = Math.max(xHi, h.min_exp + i + 1); }
        });
      }
    }
  }
  xLo = Math.floor(xLo); xHi = Math.ceil(xHi);

  function canvas(parent, width, height, cls) {
    const c = document.createElement("canvas");
    c.width = width; c.height = height; c.className = cls;
    parent.appendChild(c);
    return c;
  }

  // Shaded normal ranges and range limits on a log2 x axis; px maps log2 -> pixel.
  function drawLimits(ctx, px, top, bottom) {
    for (const band of DATA.bands) {
      ctx.fillStyle = band.fill;
      ctx.fillRect(px(band.lo), top, px(band.hi) - px(band.lo), bottom - top);
    }
    for (const limit of DATA.limits) {
      ctx.strokeStyle = limit.colour;
      ctx.setLineDash(limit.dash);
      ctx.beginPath();
      ctx.moveTo(px(limit.log2) + 0.5, top);
      ctx.lineTo(px(limit.log2) + 0.5, bottom);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  function xAxis(ctx, px, bottom, left, right) {
    ctx.strokeStyle = "#000"; ctx.fillStyle = "#000"; ctx.font = FONT; ctx.textAlign = "center";
    ctx.beginPath(); ctx.moveTo(left, bottom + 0.5); ctx.lineTo(right, bottom + 0.5); ctx.stroke();
    const stride = Math.max(1, Math.ceil((xHi - xLo) / 8));
    for (let e = Math.ceil(xLo / stride) * stride; e <= xHi; e += stride) {
      ctx.fillText(String(e), px(e), bottom + 12);
    }
  }

  function drawHistogram(c, layer, tensor, record) {
    const ctx = c.getContext("2d");
    const e = entry(record, layer, tensor);
    const left = 8, right = c.width - 8, top = 18, bottom = c.height - 18;
    const px = (v) => left + ((v - xLo) / (xHi - xLo)) * (right - left);
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.fillStyle = "#000"; ctx.font = FONT; ctx.textAlign = "left";
    let bars = 0;
    if (!e) {
      ctx.fillText(`${layer} ${tensor}: not recorded at this step`, left, 12);
      c.dataset.bars = "0";
      return;
    }
    drawLimits(ctx, px, top, bottom);
    const h = e.log2_hist;
    if (h) {
      const total = h.counts.reduce((a, b) => a + b, 0) + h.zeros;
      const peak = Math.max(1, ...h.counts);
      ctx.fillStyle = COLOURS[tensor];
      h.counts.forEach((count, i) => {
        if (count <= 0) return;
        const x0 = px(h.min_exp + i), x1 = px(h.min_exp + i + 1);
        const y = bottom - (count / peak) * (bottom - top);
        ctx.fillRect(x0, y, Math.max(1, x1 - x0 - 1), bottom - y);
        bars += 1;
      });
      const zeros = total > 0 ? (100 * h.zeros) / total : 0;
      ctx.fillStyle = "#000";
      ctx.fillText(`${layer} ${tensor}  (zeros ${zeros.toFixed(1)} %)`, left, 12);
    } else {
      ctx.fillText(`${layer} ${tensor}: RMS only (no histogram)`, left, 12);
    }
    const since = alerted.get(`${layer}/${tensor}`);
    if (since !== undefined && since <= record.step) {
      ctx.fillStyle = "#b00"; ctx.textAlign = "right";
      ctx.fillText(`alert since step ${since}`, right, 12);
      ctx.textAlign = "left";
      c.dataset.alert = String(since);
    }
    const r = log2(e.rms);
    if (r !== null) {
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(px(r), top); ctx.lineTo(px(r), bottom); ctx.stroke();
      ctx.lineWidth = 1;
    }
    xAxis(ctx, px, bottom, left, right);
    c.dataset.bars = String(bars);
  }

  function drawProfile(c, record) {
    const rows = [];
    for (const layer of layers) {
      if (!state.visible.has(layer)) continue;
      for (const tensor of tensors) {
        const e = entry(record, layer, tensor);
        if (e) rows.push([layer, tensor, log2(e.rms)]);
      }
    }
    c.height = Math.max(80, 16 * rows.length + 40);
    const ctx = c.getContext("2d");
    const left = 150, right = c.width - 10, top = 8, bottom = c.height - 22;
    const px = (v) => left + ((v - xLo) / (xHi - xLo)) * (right - left);
    ctx.clearRect(0, 0, c.width, c.height);
    drawLimits(ctx, px, top, bottom);
    ctx.font = FONT;
    rows.forEach(([layer, tensor, r], i) => {
      const y = top + 16 * i;
      ctx.fillStyle = "#000"; ctx.textAlign = "right";
      ctx.fillText(`${layer} ${tensor}`, left - 6, y + 11);
      if (r === null) return;
      ctx.fillStyle = COLOURS[tensor];
      ctx.fillRect(Math.min(px(0), px(r)), y + 2, Math.abs(px(r) - px(0)), 11);
    });
    ctx.strokeStyle = "#000";
    ctx.beginPath(); ctx.moveTo(px(0) + 0.5, top); ctx.lineTo(px(0) + 0.5, bottom); ctx.stroke();
    xAxis(ctx, px, bottom, left, right);
    c.dataset.rows = String(rows.length);
  }

  function drawCurves(c, tensor) {
    const ctx = c.getContext("2d");
    const left = 40, right = c.width - 10, top = 18, bottom = c.height - 18;
    ctx.clearRect(0, 0, c.width, c.height);
    const series = layers.map((layer) => records.map((r) => {
      const e = entry(r, layer, tensor);
      return e ? log2(e.rms) : null;
    }));
    const values = series.flat().filter((v) => v !== null);
    ctx.fillStyle = "#000"; ctx.font = FONT; ctx.textAlign = "left";
    ctx.fillText(`${tensor}: log2 RMS over steps`, left, 12);
    if (!values.length) { c.dataset.points = "0"; return; }
    let yLo = Math.floor(Math.min(...values)) - 1, yHi = Math.ceil(Math.max(...values)) + 1;
    const s0 = steps[0], s1 = Math.max(steps[steps.length - 1], s0 + 1);
    const px = (s) => left + ((s - s0) / (s1 - s0)) * (right - left);
    const py = (v) => bottom - ((v - yLo) / (yHi - yLo)) * (bottom - top);
    ctx.strokeStyle = "#bbb";
    ctx.beginPath(); ctx.moveTo(px(steps[state.index]) + 0.5, top);
    ctx.lineTo(px(steps[state.index]) + 0.5, bottom); ctx.stroke();
    ctx.strokeStyle = "#000"; ctx.textAlign = "right";
    ctx.beginPath(); ctx.moveTo(left + 0.5, top); ctx.lineTo(left + 0.5, bottom);
    ctx.lineTo(right, bottom + 0.5); ctx.stroke();
    ctx.fillText(String(yHi), left - 4, top + 8); ctx.fillText(String(yLo), left - 4, bottom);
    ctx.textAlign = "center";
    ctx.fillText(String(s0), left, bottom + 13); ctx.fillText(String(s1), right - 10, bottom + 13);
    let points = 0;
    series.forEach((ys, li) => {
      if (!state.visible.has(layers[li])) return;
      ctx.strokeStyle = ctx.fillStyle = LAYER_COLOURS[li % LAYER_COLOURS.length];
      ctx.lineWidth = 2;
      ctx.beginPath();
      let pen = false;
      ys.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        if (pen) ctx.lineTo(px(steps[i]), py(v)); else ctx.moveTo(px(steps[i]), py(v));
        pen = true; points += 1;
      });
      ctx.stroke();
      ys.forEach((v, i) => {
        if (v !== null) ctx.fillRect(px(steps[i]) - 2, py(v) - 2, 4, 4);
      });
      ctx.lineWidth = 1;
    });
    c.dataset.points = String(points);
  }

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v !== "number") return String(v);
    return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  }

  function drawTable(record) {
    const table = document.getElementById("values");
    const stats = [];
    for (const layer of layers) {
      for (const tensor of tensors) {
        const e = entry(record, layer, tensor);
        if (!e) continue;
        for (const k of Object.keys(e)) if (k !== "log2_hist" && !stats.includes(k)) stats.push(k);
      }
    }
    const head = ["layer", "tensor", "log2 rms", ...stats];
    let text = "<tr>" + head.map((h) => `<th>${esc(h)}</th>`).join("") + "</tr>";
    for (const layer of layers) {
      if (!state.visible.has(layer)) continue;
      for (const tensor of tensors) {
        const e = entry(record, layer, tensor);
        if (!e) continue;
        const r = log2(e.rms);
        const cells = [layer, tensor, r === null ? "—" : r.toFixed(2), ...stats.map((s) => fmt(e[s]))];
        text += "<tr>" + cells.map((v) => `<td>${esc(v)}</td>`).join("") + "</tr>";
      }
    }
    table.innerHTML = text;
  }

  function render() {
    const record = records[state.index];
    document.getElementById("step-label").textContent = String(record.step);
    const bad = record.first_non_finite;
    document.getElementById("non-finite").textContent =
      bad ? `non-finite first at ${bad.join("/")}` : "";
    drawProfile(document.getElementById("profile"), record);
    const grid = document.getElementById("histograms");
    grid.innerHTML = "";
    for (const layer of layers) {
      if (!state.visible.has(layer)) continue;
      const row = document.createElement("div");
      row.className = "hist-row";
      grid.appendChild(row);
      for (const tensor of tensors) {
        if (!records.some((r) => entry(r, layer, tensor))) {
          // A tensor the layer never has (a norm without weights) keeps its column empty.
          const gap = document.createElement("span");
          gap.className = "gap";
          row.appendChild(gap);
          continue;
        }
        const c = canvas(row, 270, 130, "hist");
        c.dataset.layer = layer; c.dataset.tensor = tensor;
        drawHistogram(c, layer, tensor, record);
      }
    }
    for (const c of document.querySelectorAll("canvas.curve")) drawCurves(c, c.dataset.tensor);
    drawTable(record);
    location.replace("#" + new URLSearchParams({
      step: String(record.step), layers: [...state.visible].join(","),
    }).toString().replace(/%2C/g, ","));
    document.body.dataset.step = String(record.step);
    // Where each plot lies on the page, so a screenshot can be checked plot by plot.
    for (const c of document.querySelectorAll("canvas")) {
      const box = c.getBoundingClientRect();
      c.dataset.box = [box.left + scrollX, box.top + scrollY, box.width, box.height]
        .map(Math.round).join(",");
    }
  }

  const slider = document.getElementById("step");
  slider.max = String(records.length - 1);
  slider.value = String(state.index);
  slider.addEventListener("input", () => { state.index = Number(slider.value); render(); });
  const filter = document.getElementById("layers");
  for (const layer of layers) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.value = layer; box.checked = state.visible.has(layer);
    box.addEventListener("change", () => {
      if (box.checked) state.visible.add(layer); else state.visible.delete(layer);
      render();
    });
    label.appendChild(box); label.appendChild(document.createTextNode(" " + layer));
    filter.appendChild(label);
  }
  const curves = document.getElementById("curves");
  for (const tensor of tensors) {
    const c = canvas(curves, 430, 220, "curve");
    c.dataset.tensor = tensor;
  }
  const legend = document.getElementById("legend");
  legend.innerHTML = DATA.bands.map((b) =>
    `<span class="swatch" style="background:${b.fill}"></span>${b.label}`).join(" ") + " " +
    DATA.limits.map((l) => `<span class="swatch" style="background:${l.colour}"></span>${l.label}`
    + ` (2<sup>${l.log2.toFixed(2)}</sup>)`).join(" ");
  const layerLegend = document.getElementById("layer-legend");
  layerLegend.innerHTML = layers.map((l, i) =>
    `<span class="swatch" style="background:${LAYER_COLOURS[i % LAYER_COLOURS.length]}"></span>${esc(l)}`
  ).join(" ");
  render();
  document.body.dataset.rendered = "ok";
})();
