// mqlite console: live refresh of #live, the action token, and SVG charts (no libraries).
"use strict";

(function () {
  const refreshMs = parseInt(document.body.dataset.refresh || "2000", 10);
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
                  "#db2777"];

  // -- the token: remembered for this tab only, filled into every action form ---------------
  function setupForms() {
    for (const form of document.querySelectorAll("form.action")) {
      const field = form.querySelector("input[name=token]");
      if (field && !field.value) field.value = sessionStorage.getItem("mqlite-token") || "";
      form.addEventListener("submit", (ev) => {
        if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
          ev.preventDefault();
          return;
        }
        if (field && field.value) sessionStorage.setItem("mqlite-token", field.value);
      });
    }
  }

  // -- live numbers: re-fetch this page and swap the #live block ----------------------------
  let liveBusy = false, chartsBusy = false;

  async function refreshLive() {
    const live = document.getElementById("live");
    if (!live || liveBusy) return;
    liveBusy = true;
    try {
      const resp = await fetch(window.location.href, {headers: {"Accept": "text/html"}});
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (fresh) live.innerHTML = fresh.innerHTML;
      const stamp = doc.getElementById("stamp");
      if (stamp) document.getElementById("stamp").textContent = stamp.textContent;
      document.body.dataset.refreshed = String((parseInt(document.body.dataset.refreshed || "0",
                                                          10)) + 1);
    } catch (e) {
      // the console went away: keep the last numbers
    } finally {
      liveBusy = false;
    }
  }

  // -- charts -------------------------------------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(2)));
  }

  function draw(svg, data) {
    const W = 640, H = 200, L = 48, R = 8, T = 8, B = 22;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const legend = svg.parentElement.querySelector(".legend");
    if (legend) legend.textContent = "";
    const t = data.t;
    const names = Object.keys(data.series);
    if (t.length < 2 || names.length === 0) {
      svg.appendChild(el("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"},
                         "collecting samples…"));
      svg.dataset.points = "0";
      return;
    }
    let top = 0;
    for (const n of names) for (const v of data.series[n]) if (v !== null && v > top) top = v;
    top = niceMax(top);
    const t0 = t[0], t1 = t[t.length - 1], span = Math.max(1, t1 - t0);
    const x = (ms) => L + (W - L - R) * (ms - t0) / span;
    const y = (v) => T + (H - T - B) * (1 - v / top);
    for (let i = 0; i <= 4; i++) {
      const v = top * i / 4;
      svg.appendChild(el("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid"}));
      svg.appendChild(el("text", {x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "axis"},
                         fmt(v)));
    }
    const mins = span / 60000;
    svg.appendChild(el("text", {x: L, y: H - 6, class: "axis"},
                       "-" + (mins >= 1 ? mins.toFixed(1) + " min" : (span / 1000).toFixed(0) + " s")));
    svg.appendChild(el("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "axis"}, "now"));
    names.forEach((n, i) => {
      const pts = [];
      data.series[n].forEach((v, j) => {
        if (v !== null) pts.push(x(t[j]).toFixed(1) + "," + y(v).toFixed(1));
      });
      const color = COLORS[i % COLORS.length];
      svg.appendChild(el("polyline", {points: pts.join(" "), fill: "none", stroke: color,
                                      "stroke-width": 2, "data-name": n}));
      if (legend) {
        const item = document.createElement("span");
        item.className = "item";
        const sw = document.createElement("i");
        sw.style.background = color;
        item.appendChild(sw);
        const last = data.series[n][data.series[n].length - 1];
        item.appendChild(document.createTextNode(n + " " + (last === null ? "-" : fmt(last))));
        legend.appendChild(item);
      }
    });
    svg.dataset.points = String(t.length);
  }

  async function refreshCharts() {
    if (chartsBusy) return;
    chartsBusy = true;
    try {
      await drawAll();
    } finally {
      chartsBusy = false;
    }
  }

  async function drawAll() {
    for (const svg of document.querySelectorAll("svg.chart")) {
      const params = new URLSearchParams({chart: svg.dataset.chart});
      for (const s of (svg.dataset.series || "").split("\n")) if (s) params.append("series", s);
      try {
        const resp = await fetch("/api/history?" + params.toString());
        if (resp.ok) draw(svg, await resp.json());
      } catch (e) {
        // keep the last drawing
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupForms();
    refreshCharts();
    setInterval(refreshLive, refreshMs);
    setInterval(refreshCharts, refreshMs);
  });
})();
