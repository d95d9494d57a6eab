// The timeline: one row per event, virtualised (only the rows in view, plus a few, are in the DOM), so a
// 10,000-event stream scrolls as fast as a 10-event one. Rows are the server's; this module only draws them.

const OVERSCAN = 12;

function cell(cls, text) {
  const span = document.createElement("span");
  span.className = cls;
  span.textContent = text;
  return span;
}

export class Timeline {
  constructor(body, spacer, { onSelect }) {
    this.body = body;
    this.spacer = spacer;
    this.onSelect = onSelect;
    this.rows = [];        // every row of the response shown
    this.findings = [];    // the response's findings (rows point into it by index)
    this.visible = [];     // indexes of the rows that pass the filters, in order
    this.selected = -1;    // the selected row's index (in this.rows)
    this.rowHeight = 22;
    this.drawn = new Map();
    this.frame = 0;
    body.addEventListener("scroll", () => this.schedule());
    new ResizeObserver(() => this.schedule()).observe(body);
    body.addEventListener("click", (e) => {
      const el = e.target.closest(".row");
      if (el) this.onSelect(Number(el.dataset.i));
    });
  }

  measure() {
    const h = parseFloat(getComputedStyle(this.body).getPropertyValue("--row"));
    if (h > 0) this.rowHeight = h;
  }

  setRows(rows, findings, visible) {
    this.rows = rows;
    this.findings = findings;
    this.visible = visible;
    this.clear();
    this.schedule();
  }

  setVisible(visible) {
    this.visible = visible;
    this.clear();
    this.schedule();
  }

  clear() {
    for (const el of this.drawn.values()) el.remove();
    this.drawn.clear();
  }

  // A row changed (a finding arrived): redraw it next frame.
  invalidate(index) {
    const el = this.drawn.get(index);
    if (el) { el.remove(); this.drawn.delete(index); }
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
  }

  // Where row `index` stands among the visible rows (-1: filtered out).
  position(index) {
    const v = this.visible;
    let lo = 0, hi = v.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (v[mid] === index) return mid;
      if (v[mid] < index) lo = mid + 1; else hi = mid - 1;
    }
    return -1;
  }

  // The first visible row at or after `index` (or the last one before it).
  nearest(index) {
    const v = this.visible;
    if (!v.length) return -1;
    let lo = 0, hi = v.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (v[mid] < index) lo = mid + 1; else hi = mid; }
    return lo < v.length ? lo : v.length - 1;
  }

  select(index, { scroll = true } = {}) {
    const old = this.drawn.get(this.selected);
    if (old) old.classList.remove("selected");
    this.selected = index;
    const el = this.drawn.get(index);
    if (el) el.classList.add("selected");
    this.body.setAttribute("aria-activedescendant", `row-${index}`);
    if (scroll) this.scrollTo(index);
  }

  scrollTo(index) {
    const pos = this.position(index);
    if (pos < 0) return;
    const top = pos * this.rowHeight, view = this.body.clientHeight;
    if (top < this.body.scrollTop) this.body.scrollTop = top;
    else if (top + this.rowHeight > this.body.scrollTop + view) this.body.scrollTop = top + this.rowHeight - view;
    this.schedule();
  }

  pageSize() {
    return Math.max(1, Math.floor(this.body.clientHeight / this.rowHeight) - 1);
  }

  draw() {
    const n = this.visible.length, h = this.rowHeight;
    this.spacer.style.height = `${n * h}px`;
    const first = Math.max(0, Math.floor(this.body.scrollTop / h) - OVERSCAN);
    const last = Math.min(n, Math.ceil((this.body.scrollTop + this.body.clientHeight) / h) + OVERSCAN);
    const wanted = new Set();
    for (let pos = first; pos < last; pos++) wanted.add(this.visible[pos]);
    for (const [index, el] of this.drawn) {
      if (!wanted.has(index)) { el.remove(); this.drawn.delete(index); }
    }
    for (let pos = first; pos < last; pos++) {
      const index = this.visible[pos];
      let el = this.drawn.get(index);
      if (!el) {
        el = this.rowElement(this.rows[index]);
        this.drawn.set(index, el);
        this.body.appendChild(el);
      }
      el.style.transform = `translateY(${pos * h}px)`;
    }
  }

  rowElement(row) {
    const el = document.createElement("div");
    el.className = "row";
    el.id = `row-${row.i}`;
    el.dataset.i = row.i;
    el.setAttribute("role", "option");
    const severities = row.f.map((k) => this.findings[k].severity);
    if (severities.includes("error")) el.classList.add("error");
    else if (severities.length) el.classList.add("warning");
    if (row.i === this.selected) el.classList.add("selected");
    const type = cell("c-type", row.type);
    if (row.sse) {
      const name = document.createElement("span");
      name.className = "sse-name";
      name.textContent = ` (event: ${row.sse})`;
      type.appendChild(name);
    }
    type.title = row.type;
    const item = cell("c-item", row.item ?? "");
    item.title = row.item ?? "";
    el.append(
      cell("c-i", row.i), cell("c-seq", row.seq ?? "–"), type, cell("c-oi", row.oi ?? ""),
      cell("c-part", row.part ?? ""), item, cell("c-dt", row.dt ?? "–"), cell("c-size", row.size),
      cell("c-f", row.f.length ? String(row.f.length) : ""),
    );
    el.setAttribute("aria-label", `event ${row.i}, ${row.type}${row.f.length ? `, ${row.f.length} finding(s)` : ""}`);
    return el;
  }
}
