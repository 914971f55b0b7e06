// TIO portal: plain JavaScript, no build step, no CDN (Leaflet is served by the app).
"use strict";

const $ = (id) => document.getElementById(id);

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function authHeaders() {
  const token = localStorage.getItem("tio-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

async function getJSON(url) {
  const r = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.detail || r.statusText);
  return body;
}

function showError(err) {
  const box = $("error");
  if (box) box.textContent = err ? String(err.message || err) : "";
}

function bar(percent) {
  return `<span class="bar"><span style="width:${Math.max(0, Math.min(100, percent))}%"></span></span>`;
}

function baseMap(id) {
  const map = L.map(id, { zoomControl: true, attributionControl: true });
  map.setView([20, 0], 2);
  return map;
}

function osmLayer() {
  return L.tileLayer("https://tile.openstreetmap.org/{z}/{x}/{y}.png", {
    maxZoom: 19,
    attribution: "&copy; OpenStreetMap contributors",
  });
}

// ------------------------------------------------------------------ submit page
async function initSubmit() {
  const info = await getJSON("/api/portal");
  const map = baseMap("map");
  let preview = null;
  let area = null;
  const tiles = osmLayer();
  $("tiles").addEventListener("change", (e) => {
    if (e.target.checked) tiles.addTo(map).bringToBack();
    else map.removeLayer(tiles);
  });

  // data sources: the allow-listed folders, then the catalogue
  const select = $("source");
  for (const s of info.sources) {
    const opt = document.createElement("option");
    opt.value = "folder:" + s.name;
    opt.textContent = `${s.name} (server folder${s.dates ? `, ${s.dates} dates` : ""})`;
    select.appendChild(opt);
  }
  const cat = document.createElement("option");
  cat.value = "catalog";
  cat.textContent = "STAC catalogue" + (info.catalog_available ? "" : " (not available on this server)");
  select.appendChild(cat);

  function showSource() {
    const value = select.value;
    $("catalog-fields").hidden = value !== "catalog";
    if (preview) { map.removeLayer(preview); preview = null; }
    const s = info.sources.find((x) => "folder:" + x.name === value);
    $("source-info").textContent = s && s.first ? `images from ${s.first} to ${s.last}` : "";
    if (s && s.preview) {
      preview = L.imageOverlay(s.preview, s.bounds, { opacity: 1 }).addTo(map);
      preview.bringToBack();
      map.fitBounds(s.bounds, { padding: [20, 20] });
    }
  }
  select.addEventListener("change", showSource);
  showSource();

  if (info.token_required) {
    $("token-field").hidden = false;
    $("token").value = localStorage.getItem("tio-token") || "";
  }

  // the advanced parameters, generated from the configuration model
  const params = $("params");
  for (const section of info.parameters) {
    const det = document.createElement("details");
    det.innerHTML = `<summary>${esc(section.section)} <span class="hint">${esc(section.title)}</span></summary>`;
    for (const f of section.fields) {
      const id = `p-${section.section}-${f.name}`;
      const div = document.createElement("div");
      div.className = "field";
      const shown = f.default === null ? "unset" : JSON.stringify(f.default);
      let input;
      if (f.kind === "bool") {
        input = `<input type="checkbox" id="${id}" ${f.default ? "checked" : ""}>`;
      } else if (f.kind === "enum") {
        input = `<select id="${id}">` + f.options.map((o) =>
          `<option ${o === f.default ? "selected" : ""}>${esc(o)}</option>`).join("") + "</select>";
      } else {
        const type = f.kind === "int" || f.kind === "float" ? "number" : "text";
        const step = f.kind === "float" ? ' step="any"' : "";
        const val = f.default === null ? "" : (Array.isArray(f.default) ? f.default.join(",") : f.default);
        input = `<input type="${type}"${step} id="${id}" value="${esc(val)}" placeholder="unset">`;
      }
      div.innerHTML = `<label for="${id}">${esc(f.name)} <span class="hint">default ${esc(shown)}` +
        `${f.allowed ? "; " + esc(f.allowed) : ""}</span></label>${input}` +
        `<div class="hint">${esc(f.description)}</div>`;
      div.dataset.section = section.section;
      div.dataset.name = f.name;
      div.dataset.kind = f.kind;
      div.dataset.default = JSON.stringify(f.default);
      det.appendChild(div);
    }
    params.appendChild(det);
  }

  // the area: typed, or drawn (press, drag, release)
  const boxInputs = ["bbox-w", "bbox-s", "bbox-e", "bbox-n"].map($);
  function readBox() {
    const v = boxInputs.map((i) => i.value.trim());
    if (v.every((x) => x === "")) return null;
    return v.map(Number);
  }
  function drawBox() {
    const b = readBox();
    if (area) { map.removeLayer(area); area = null; }
    if (b && b.every(Number.isFinite) && b[0] < b[2] && b[1] < b[3]) {
      area = L.rectangle([[b[1], b[0]], [b[3], b[2]]], { color: "#f80", weight: 2, fill: false }).addTo(map);
    }
  }
  boxInputs.forEach((i) => i.addEventListener("input", drawBox));
  $("clear-area").addEventListener("click", () => { boxInputs.forEach((i) => (i.value = "")); drawBox(); });
  let drawing = false, corner = null;
  $("draw").addEventListener("click", () => {
    drawing = true;
    map.dragging.disable();
    map.getContainer().style.cursor = "crosshair";
    $("draw").textContent = "Press and drag on the map…";
  });
  map.on("mousedown", (e) => { if (drawing) corner = e.latlng; });
  map.on("mousemove", (e) => {
    if (!drawing || !corner) return;
    const b = L.latLngBounds(corner, e.latlng);
    if (area) area.setBounds(b);
    else area = L.rectangle(b, { color: "#f80", weight: 2, fill: false }).addTo(map);
  });
  map.on("mouseup", (e) => {
    if (!drawing || !corner) return;
    const b = L.latLngBounds(corner, e.latlng);
    const r = (x) => Math.round(x * 1e6) / 1e6;
    [r(b.getWest()), r(b.getSouth()), r(b.getEast()), r(b.getNorth())].forEach((v, k) => (boxInputs[k].value = v));
    drawing = false; corner = null;
    map.dragging.enable();
    map.getContainer().style.cursor = "";
    $("draw").textContent = "Draw area on the map";
    drawBox();
  });

  $("job-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError(null);
    const inputs = {};
    if (select.value === "catalog") {
      inputs.source = { catalog: $("catalog").value.trim(), collection: $("collection").value.trim() };
    } else {
      inputs.source = { folder: select.value.slice("folder:".length) };
    }
    const b = readBox();
    if (b) inputs.bbox = b;
    if ($("start").value) inputs.start = $("start").value;
    if ($("end").value) inputs.end = $("end").value;
    if ($("max_cloud").value !== "") inputs.max_cloud = Number($("max_cloud").value);
    if ($("title").value.trim()) inputs.title = $("title").value.trim();
    const parameters = {};
    for (const div of params.querySelectorAll(".field")) {
      const el = div.querySelector("input, select");
      const def = JSON.parse(div.dataset.default);
      let value;
      if (div.dataset.kind === "bool") value = el.checked;
      else if (el.value === "") value = null;
      else if (div.dataset.kind === "int" || div.dataset.kind === "float") value = Number(el.value);
      else value = el.value;
      const same = JSON.stringify(value) === JSON.stringify(def) ||
        (Array.isArray(def) && el.value === def.join(","));
      if (!same) (parameters[div.dataset.section] ||= {})[div.dataset.name] = value;
    }
    if (Object.keys(parameters).length) inputs.parameters = parameters;
    if (info.token_required) localStorage.setItem("tio-token", $("token").value.trim());
    $("submit").disabled = true;
    try {
      const r = await fetch("/processes/tio/execution", {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ inputs }),
      });
      const body = await r.json().catch(() => ({}));
      if (r.status !== 201) throw new Error(body.detail || r.statusText);
      location.href = "job.html?id=" + encodeURIComponent(body.jobID);
    } catch (err) {
      showError(err);
    } finally {
      $("submit").disabled = false;
    }
  });
}

// -------------------------------------------------------------------- jobs page
async function cancelJob(id) {
  if (!confirm("Cancel this job and delete its files?")) return;
  const r = await fetch("/jobs/" + id, { method: "DELETE", headers: authHeaders() });
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    showError(body.detail || r.statusText);
  }
}

async function initJobs() {
  const tbody = document.querySelector("#jobs tbody");
  async function refresh() {
    try {
      const { jobs } = await getJSON("/jobs");
      tbody.innerHTML = jobs.map((j) => `<tr data-job="${esc(j.jobID)}">
        <td><a href="job.html?id=${esc(j.jobID)}">${esc(j.title || j.jobID.slice(0, 8))}</a></td>
        <td class="status-${esc(j.status)}">${esc(j.status)}</td>
        <td>${bar(j.progress)} ${esc(j.progress)}%</td>
        <td class="hint">${esc(j.message)}</td>
        <td>${esc(j.created.replace("T", " ").replace("Z", ""))}</td>
        <td>${["accepted", "running"].includes(j.status) ? `<button class="danger" data-cancel="${esc(j.jobID)}">Cancel</button>` : ""}</td>
      </tr>`).join("") || '<tr><td colspan="6">No job yet: <a href="index.html">submit one</a>.</td></tr>';
      tbody.querySelectorAll("[data-cancel]").forEach((b) =>
        b.addEventListener("click", () => cancelJob(b.dataset.cancel).then(refresh)));
    } catch (err) {
      showError(err);
    }
  }
  await refresh();
  setInterval(refresh, 2000);
}

// ---------------------------------------------------------------------- job page
function plotSeries(data) {
  const W = 440, H = 260, L0 = 48, R0 = 10, T0 = 24, B0 = 36;
  const t = data.dates.map((d) => Date.parse(d));
  const series = [["ew", "#1f77b4", "east-west"], ["ns", "#d62728", "north-south"], ["magnitude", "#333", "magnitude"]];
  const all = [];
  for (const [k] of series) data[k].forEach((v, i) => {
    if (v !== null) {
      all.push(v);
      if (k === "magnitude" && data.sigma_magnitude[i] !== null) all.push(v + data.sigma_magnitude[i]);
    }
  });
  if (!all.length) return '<p class="hint">No value at this point (not inverted).</p>';
  let lo = Math.min(0, ...all), hi = Math.max(0, ...all);
  if (hi - lo < 1e-6) { hi += 1; lo -= 1; }
  const t0 = Math.min(...t), t1 = Math.max(...t) === t0 ? t0 + 1 : Math.max(...t);
  const x = (v) => L0 + ((v - t0) / (t1 - t0)) * (W - L0 - R0);
  const y = (v) => T0 + (1 - (v - lo) / (hi - lo)) * (H - T0 - B0);
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-size="11">`;
  svg += `<line x1="${L0}" y1="${y(0)}" x2="${W - R0}" y2="${y(0)}" stroke="#aaa" stroke-dasharray="3,3"/>`;
  svg += `<line x1="${L0}" y1="${T0}" x2="${L0}" y2="${H - B0}" stroke="#000"/>`;
  svg += `<line x1="${L0}" y1="${H - B0}" x2="${W - R0}" y2="${H - B0}" stroke="#000"/>`;
  for (const v of [lo, (lo + hi) / 2, hi]) {
    svg += `<text x="${L0 - 4}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(2)}</text>`;
  }
  svg += `<text x="12" y="${(T0 + H - B0) / 2}" transform="rotate(-90 12 ${(T0 + H - B0) / 2})" text-anchor="middle">${esc(data.units)}</text>`;
  const ticks = [0, Math.floor((t.length - 1) / 2), t.length - 1];
  for (const i of [...new Set(ticks)]) {
    const anchor = i === 0 ? "start" : i === t.length - 1 ? "end" : "middle";
    svg += `<text x="${x(t[i])}" y="${H - B0 + 14}" text-anchor="${anchor}">${esc(data.dates[i])}</text>`;
  }
  series.forEach(([k, color, label], n) => {
    const pts = data[k].map((v, i) => (v === null ? null : `${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`)).filter(Boolean);
    svg += `<polyline fill="none" stroke="${color}" stroke-width="1.8" points="${pts.join(" ")}"/>`;
    data[k].forEach((v, i) => {
      if (v === null) return;
      svg += `<circle cx="${x(t[i])}" cy="${y(v)}" r="2.5" fill="${color}"/>`;
      const s = data["sigma_" + k][i];
      if (s) svg += `<line x1="${x(t[i])}" x2="${x(t[i])}" y1="${y(v - s)}" y2="${y(v + s)}" stroke="${color}" stroke-opacity=".5"/>`;
    });
    svg += `<text x="${L0 + 8 + n * 110}" y="14" fill="${color}">■ ${label}</text>`;
  });
  svg += "</svg>";
  return svg + `<div class="hint">lon ${data.lon.toFixed(5)}, lat ${data.lat.toFixed(5)} (cell row ${data.row}, col ${data.col}); bars: 1 sigma</div>`;
}

async function showResults(id) {
  $("results").hidden = false;
  const base = `/jobs/${id}`;
  $("zip").href = base + "/download.zip";
  $("report-link").href = base + "/files/report.html";
  $("results-json").href = base + "/results";
  $("report").src = base + "/files/report.html";
  const { files } = await getJSON(base + "/files");
  $("files").innerHTML = files.map((f) =>
    `<div><a href="${esc(f.href)}" download>${esc(f.path)}</a> <span class="hint">${(f.size / 1024).toFixed(0)} kB</span></div>`).join("");
  const names = new Set(files.map((f) => f.path));
  const pictures = [
    ["animation.png", "Cumulative displacement through time (animated)"],
    ["quicklook_cumulative.png", "Cumulative displacement"],
    ["quicklook_velocity.png", "Mean velocity"],
    ["quicklook_rms.png", "Residual RMS"],
    ["quicklook_coverage.png", "Coverage"],
    ["points.png", "Time series at the points"],
  ];
  $("gallery").innerHTML = pictures.filter(([p]) => names.has(p)).map(([p, cap]) =>
    `<figure><a href="${base}/files/${p}" target="_blank"><img src="${base}/files/${p}" alt="${esc(cap)}"></a><figcaption>${esc(cap)}</figcaption></figure>`).join("");

  const map = baseMap("map");
  if (!names.has("overlays/overlays.json")) {
    $("map").innerHTML = '<p class="hint" style="padding:10px">No map overlays (run in pixel units).</p>';
    return;
  }
  const index = await getJSON(base + "/files/overlays/overlays.json");
  const layers = {};
  let background = null;
  if (index.overlays.reference) {
    const o = index.overlays.reference;
    background = L.imageOverlay(`${base}/files/overlays/${o.file}`, o.bounds).addTo(map);
  }
  const baseLayers = { "reference image": background || L.layerGroup().addTo(map), "OpenStreetMap (online)": osmLayer() };
  const anim = index.animation;
  const animation = L.imageOverlay(`${base}/files/overlays/${anim.file}`, anim.bounds,
    { opacity: 0.8, className: "tio-animation", alt: "animated cumulative displacement" }).addTo(map);
  layers["animation"] = animation;
  for (const [name, o] of Object.entries(index.overlays)) {
    if (name === "reference") continue;
    layers[name.replace(/_/g, " ")] = L.imageOverlay(`${base}/files/overlays/${o.file}`, o.bounds, { opacity: 0.8 });
  }
  L.control.layers(baseLayers, layers, { collapsed: false, position: "topright" }).addTo(map);
  const legend = L.control({ position: "bottomleft" });
  legend.onAdd = () => {
    const div = L.DomUtil.create("div", "legend");
    div.innerHTML = `animation: displacement magnitude 0 to ${Number(anim.vmax).toFixed(2)} ${esc(anim.units)} ` +
      `(${esc(anim.colormap)}), ${esc(anim.dates[0])} to ${esc(anim.dates[anim.dates.length - 1])}`;
    return div;
  };
  legend.addTo(map);
  map.fitBounds(anim.bounds, { padding: [10, 10] });
  let marker = null;
  map.on("click", async (e) => {
    if (marker) map.removeLayer(marker);
    marker = L.circleMarker(e.latlng, { radius: 6, color: "#0ff", weight: 2 }).addTo(map);
    $("chart").innerHTML = '<p class="hint">Reading…</p>';
    try {
      const data = await getJSON(`${base}/timeseries?lon=${e.latlng.lng}&lat=${e.latlng.lat}`);
      $("chart").innerHTML = plotSeries(data);
    } catch (err) {
      $("chart").innerHTML = `<p class="error">${esc(err.message)}</p>`;
    }
  });
}

async function initJob() {
  const id = new URLSearchParams(location.search).get("id") || "";
  let shown = false;
  $("cancel").addEventListener("click", () => cancelJob(id).then(refresh));
  async function refresh() {
    let job;
    try {
      job = await getJSON("/jobs/" + encodeURIComponent(id));
    } catch (err) {
      showError(err);
      return true;
    }
    document.title = "TIO – " + (job.title || job.jobID);
    $("job-title").textContent = job.title || job.jobID;
    $("job-status").textContent = job.status;
    $("job-status").className = "status-" + job.status;
    document.body.dataset.status = job.status;
    $("job-bar").style.width = job.progress + "%";
    $("job-progress").textContent = job.progress;
    $("job-message").textContent = job.message;
    $("cancel").hidden = !["accepted", "running"].includes(job.status);
    if (job.status !== "accepted" && job.status !== "dismissed") {
      fetch(`/jobs/${id}/log?tail=40`).then((r) => r.text()).then((t) => ($("log").textContent = t));
    }
    if (job.status === "failed") showError("The job failed: " + job.message);
    if (job.status === "successful" && !shown) {
      shown = true;
      await showResults(id);
    }
    return ["successful", "failed", "dismissed"].includes(job.status);
  }
  if (!(await refresh())) {
    const timer = setInterval(async () => { if (await refresh()) clearInterval(timer); }, 1500);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  const init = { submit: initSubmit, jobs: initJobs, job: initJob }[page];
  if (init) init().catch(showError);
});
