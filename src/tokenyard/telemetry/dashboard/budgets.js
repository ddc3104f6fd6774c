// The dashboard's budgets: one bar per budget in force (spend against its limit, coloured by the share spent,
// its thresholds marked, soft ones striped), read from /admin/budgets (the session cookie) every 5 s. The
// counts are what the budget watch last read (every 15 s). Everything drawn is built with textContent.
(() => {
  "use strict";

  const POLL_MS = 5000;
  const $ = (id) => document.getElementById(id);

  function el(tag, props = {}, ...children) {  // props are DOM properties (never innerHTML); children text or nodes
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else node[name] = value;
    }
    node.append(...children);
    return node;
  }

  const dollars = (x) => "$" + (Math.abs(x) >= 100 ? x.toLocaleString("en-US", {maximumFractionDigits: 0})
    : Math.abs(x) >= 0.01 || x === 0 ? x.toFixed(2) : x.toPrecision(2));
  const percent = (x) => (100 * x).toFixed(x < 0.1 ? 1 : 0) + "%";
  const pad = (n) => String(n).padStart(2, "0");
  function local(iso) {  // an ISO 8601 time in the browser's zone, to the minute
    const d = new Date(iso);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  const ROLLING = new Set(["1d", "7d", "30d"]);
  const WINDOWS = {"1d": "last 24 h", "7d": "last 7 days", "30d": "last 30 days", day: "today", month: "this month"};

  function level(share) {  // the colour class: a name, so the words say it too (not the colour alone)
    if (share >= 1) return "spent";
    if (share >= 0.8) return "high";
    if (share >= 0.5) return "half";
    return "low";
  }

  function bar(budget) {
    const scale = Math.max(1, budget.share);  // past the limit the bar is full, the limit's mark inside it
    const fill = el("span", {className: `fill ${level(budget.share)}`});
    fill.style.width = `${Math.min(100, (100 * budget.share) / scale)}%`;
    const node = el("div", {className: "budget-bar" + (budget.enforcement === "soft" ? " soft" : ""),
      title: `${percent(budget.share)} of the limit; told at ${budget.thresholds.map(percent).join(", ") || "no threshold"}`},
      fill);
    node.setAttribute("role", "meter");
    node.setAttribute("aria-valuemin", "0");
    node.setAttribute("aria-valuemax", String(budget.limit_usd));
    node.setAttribute("aria-valuenow", String(Math.min(budget.counted_usd, budget.limit_usd * scale)));
    for (const threshold of budget.thresholds) {
      if (threshold / scale > 1) continue;
      const tick = el("i", {className: threshold === 1 ? "limit" : ""});
      tick.style.left = `${(100 * threshold) / scale}%`;
      node.append(tick);
    }
    return node;
  }

  function row(budget) {
    const holder = el("td", {className: "wraps"}, el("span", {className: "pill own"}, budget.holder.kind), " ",
      el("b", {}, budget.holder.name));
    const period = el("td", {}, WINDOWS[budget.window] || budget.window,  // a calendar one in its time zone
      budget.time_zone !== "UTC" && !ROLLING.has(budget.window) ? el("span", {className: "muted"}, ` (${budget.time_zone})`) : "");
    const how = el("td", {});
    if (budget.enforcement === "soft") how.append(el("span", {className: "pill soft", title: "counted and shown, never enforced"}, "soft"));
    else how.append(el("span", {className: "pill hard", title: "when spent: " + budget.on_exceeded}, budget.on_exceeded));
    const spent = el("td", {className: `share ${level(budget.share)}`}, percent(budget.share));
    return el("tr", {dataset: {testid: "budget-row", budgetId: budget.id}},
      holder, period, how, el("td", {className: "bar-cell"}, bar(budget)), spent,
      el("td", {}, `${dollars(budget.counted_usd)} of ${dollars(budget.limit_usd)}`),
      el("td", {}, dollars(budget.remaining_usd)),
      el("td", {title: budget.resets_at}, local(budget.resets_at)));
  }

  function draw(page) {
    const box = $("budgets-table");
    if (!page.enabled) {
      box.replaceChildren(el("p", {className: "muted"}, "Budgets are counted in the meter's store: there is none (meter.store: off)."));
      return;
    }
    const checked = page.checked_at == null ? "" : new Date(page.checked_at * 1000).toLocaleTimeString();
    $("budgets-checked").textContent = checked ? `counted at ${checked}` : "";
    if (!page.data.length) {
      box.replaceChildren(el("p", {className: "muted"}, "No budgets: set them on keys, or in the config's budgets section."));
      return;
    }
    const head = el("tr", {}, ...["holder", "window", "when spent", "spend against the limit", "share", "counted",
      "left", "resets"].map((h) => el("th", {}, h)));
    box.replaceChildren(el("table", {className: "budgets-table"}, head, ...page.data.map(row)));
  }

  async function refresh() {
    try {
      const response = await fetch("/admin/budgets", {credentials: "same-origin", cache: "no-store"});
      if (response.status === 401 || response.status === 403) return;  // dashboard.js signs the page out
      if (!response.ok) throw new Error(`/admin/budgets answered ${response.status}`);
      draw(await response.json());
    } catch (failure) {
      $("budgets-table").replaceChildren(el("p", {className: "muted"}, `budgets unavailable: ${failure.message}`));
    }
  }

  refresh();
  setInterval(refresh, POLL_MS);
})();
