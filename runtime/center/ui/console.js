/*
 * console.js — the ebr console (docs/console.md): one page, one view at a time, chosen by the
 * address's fragment (#/buses, #/rules, #/events/BUS, #/trace/BUS/OFFSET, #/targets,
 * #/replays, #/schemas).  Every figure comes from ebd's admin API (docs/center.md), fetched
 * again every few seconds.  Events are untrusted input: everything shown is put into the page
 * as text nodes (el() below), never as HTML.
 */
'use strict';

const REFRESH_MS = 3000;
const TOKEN_KEY = 'ebr.console.token';

/* ---- the page's building blocks ----------------------------------------------------------- */

/* An element: el('td', {class: 'num'}, 'text', child, [more children]).  Strings become text
 * nodes; props set attributes (on* keys: listeners).  No HTML is ever parsed. */
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  return append(e, kids);
}

/* Adds children (strings as text; arrays flattened; null, undefined and false skipped). */
function append(e, ...kids) {
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    e.appendChild(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

/* Replaces what e holds. */
function fill(e, ...kids) {
  e.replaceChildren();
  return append(e, ...kids);
}

/* A link to a view of the console: parts are encoded one by one. */
function viewHref(...parts) {
  return '#/' + parts.map(p => encodeURIComponent(String(p))).join('/');
}

/* An <a> to a view of the console. */
function link(text, ...parts) {
  return el('a', { href: viewHref(...parts) }, text);
}

/* A count as "1,234" ("–" when there is none). */
function num(n) {
  return typeof n === 'number' ? n.toLocaleString('en-US') : (n === undefined || n === null ? '–' : String(n));
}

/* A rate as "0.25/s" or "120/s". */
function rate(r) {
  return typeof r === 'number' ? (r >= 10 ? r.toFixed(0) : r.toFixed(2)) + '/s' : '–';
}

/* A size in B, KiB, MiB... */
function bytes(b) {
  if (typeof b !== 'number') return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : String(b)) + ' ' + u[i];
}

/* An RFC 3339 time as "2026-12-05 16:00:00.123" (UTC, as ebd gives it). */
function when(t) {
  if (!t) return '–';
  return String(t).replace('T', ' ').replace(/Z$/, '');
}

/* A coloured label: kind (or the text itself) names its class (console.css). */
function badge(text, kind) {
  return el('span', { class: 'badge ' + (kind || text) }, text);
}

/* A message box: kind "error" or "info". */
function notice(kind, ...text) {
  return el('div', { class: 'notice ' + kind }, ...text);
}

/* A table: head names its columns ("#Name": a number, aligned right); rows are <tr>s. */
function table(head, rows, opts) {
  return el('table', opts || {},
    el('thead', {}, el('tr', {}, head.map(h => el('th', { class: h.startsWith('#') ? 'num' : null }, h.replace(/^#/, ''))))),
    el('tbody', {}, rows));
}

/* A cell holding v (text, an element or a list of them). */
function td(v, cls) {
  return el('td', { class: cls }, v);
}

/* A cell holding a count. */
function tdNum(v) {
  return el('td', { class: 'num' }, num(v));
}

/* ---- the admin API ------------------------------------------------------------------------ */

class ApiError extends Error {
  constructor(status, message, path, detail) {
    super(message);
    this.status = status;
    this.path = path;
    this.detail = detail;        /* more of the answer's say (a dry run's compiler messages) */
  }
}

const auth = {
  token: sessionStorage.getItem(TOKEN_KEY),
  asking: false,
};

/* The API's root: the console lives at ROOT/ui/, so relative to it under a proxy too. */
const ROOT = new URL('../', location.href);

/* Calls the API: resolves with the answer's JSON; rejects with an ApiError (401 and 403 also
 * ask for the token).  body: an object sent as JSON, or a string sent as text.  Every call
 * says X-Ebr-Request (without an admin token ebd takes no POST a web page could forge). */
async function api(method, path, body) {
  const headers = { 'X-Ebr-Request': '1' };
  if (auth.token) headers['Authorization'] = 'Bearer ' + auth.token;
  if (body !== undefined) headers['Content-Type'] = typeof body === 'string' ? 'text/plain' : 'application/json';
  let res;
  try {
    res = await fetch(new URL(path.replace(/^\//, ''), ROOT), {
      method, headers, cache: 'no-store',
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'ebd cannot be reached (' + e.message + ')', path);
  }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (res.ok) return data;
  const msg = data && data.error ? data.error : res.statusText || 'error';
  if (res.status === 401 || res.status === 403) askToken(res.status, msg);
  throw new ApiError(res.status, msg, path, data && typeof data.messages === 'string' ? data.messages : null);
}

/* GET path: its JSON. */
const get = path => api('GET', path);

/* Shows the token form: 401 (none sent) or 403 (refused, or not served here at all). */
function askToken(status, msg) {
  const why = document.getElementById('auth-error');
  if (status === 403 && auth.token) {
    why.textContent = 'The token was refused (403): ' + msg;
    why.hidden = false;
  } else if (status === 403) {
    why.textContent = 'Refused (403): ' + msg;
    why.hidden = false;
  } else {
    why.hidden = true;
  }
  document.getElementById('auth').hidden = false;
  if (!auth.asking) document.getElementById('auth-token').focus();
  auth.asking = true;
}

/* Keeps the admin token for this tab (or forgets it: t null). */
function setToken(t) {
  auth.token = t || null;
  if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById('forget').hidden = !t;
}

/* What a failed call says on the page. */
function failure(e) {
  if (!(e instanceof ApiError)) return notice('error', String(e));
  const what = e.path ? e.path.replace(/\?.*/, '') + ': ' : '';
  if (e.status === 401) return notice('error', what + 'this ebd needs its admin token (401).');
  if (e.status === 403) return notice('error', what + 'refused (403): ' + e.message);
  if (e.status === 404 && /no such endpoint/.test(e.message))
    return notice('error', what + 'this ebd does not serve that endpoint (404).');
  return notice('error', what + (e.status ? e.status + ' ' : '') + e.message,
    e.detail ? el('pre', { class: 'json' }, e.detail) : '');
}

/* ---- views -------------------------------------------------------------------------------- */

/* Each view: mount(root, args, query) builds what stays (forms, the chart) and returns
 * { refresh(): Promise, auto: bool } — refresh() fetches and redraws the figures. */
const views = {};

/* The buses known to ebd (for the pickers), kept from the last answer. */
let knownBuses = [];

/* Asks ebd for its buses (for the pickers); the last answer stays in knownBuses. */
async function busNames() {
  try {
    const r = await get('/v1/buses');
    knownBuses = (r.buses || []).map(b => b.name);
  } catch (e) { /* the view shows its own error */ }
  return knownBuses;
}

/* A <select> of the known buses, current chosen. */
function busPicker(id, current) {
  const s = el('select', { id, name: 'bus' });
  const names = knownBuses.slice();
  if (current && !names.includes(current)) names.unshift(current);
  for (const n of names) s.appendChild(el('option', { value: n, selected: n === current }, n));
  return s;
}

const PALETTE = ['#2f6fde', '#1f8a4c', '#c05621', '#805ad5', '#c53030', '#2c7a7b', '#b7791f', '#4a5568'];

/* Buses: counts, rates, logs, and a chart of events per minute over the last hour. */
views.buses = {
  mount(root) {
    const box = el('div');
    const canvas = el('canvas', { id: 'chart-per-minute', 'aria-label': 'events per minute' });
    append(root, el('h1', {}, 'Buses'), box,
      el('h2', {}, 'Events per minute (the last hour)'),
      el('div', { class: 'card' }, el('div', { class: 'chart' }, canvas)));
    let chart = null;
    return {
      async refresh() {
        const r = await get('/v1/buses');
        const buses = r.buses || [];
        knownBuses = buses.map(b => b.name);
        fill(box, buses.length ? table(
          ['Bus', '#Ingested', '#Refused', '#Rate', 'Log (first – next)', '#Log size', '#Segments', 'Rules', '#Schemas', ''],
          buses.map(b => el('tr', { 'data-bus': b.name },
            td(el('strong', {}, b.name)), tdNum(b.ingested), tdNum(b.refused),
            td(rate(b.rate), 'num'),
            td(b.log ? num(b.log.first) + ' – ' + num(b.log.next) : '–'),
            td(b.log ? bytes(b.log.bytes) : '–', 'num'), tdNum(b.log ? b.log.segments : null),
            td((b.rules || []).join(', ') || '–'), tdNum(b.schemas),
            td([link('events', 'events', b.name), ' · ', link('replays', 'replays', b.name)]))),
          { id: 'buses' }) : notice('info', 'No bus is declared.'));
        chart = drawPerMinute(canvas, chart, buses);
      },
    };
  },
};

/* Draws (or updates in place) the events-per-minute chart: one line per bus. */
function drawPerMinute(canvas, chart, buses) {
  if (typeof Chart === 'undefined') return null;
  const longest = buses.reduce((a, b) => (b.per_minute || []).length > a.length ? b.per_minute : a, []);
  const labels = longest.map(p => String(p.time).slice(11, 16));
  const datasets = buses.map((b, i) => ({
    label: b.name,
    data: (b.per_minute || []).map(p => p.count),
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length] + '22',
    fill: true, tension: 0.25, pointRadius: 0, borderWidth: 2,
  }));
  if (chart) {
    chart.data.labels = labels;
    chart.data.datasets = datasets;
    chart.update('none');
    return chart;
  }
  return new Chart(canvas.getContext('2d'), {
    type: 'line',
    data: { labels, datasets },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      scales: { y: { beginAtZero: true, ticks: { precision: 0 } }, x: { ticks: { maxTicksLimit: 12, maxRotation: 0 } } },
      plugins: { legend: { position: 'bottom' } },
    },
  });
}

/* Rules: what each matched, and where it sends; and a dry run of rules typed in. */
views.rules = {
  mount(root) {
    const box = el('div');
    append(root, el('h1', {}, 'Rules'), box, dryRun());
    return {
      async refresh() {
        const r = await get('/v1/rules');
        const rules = r.rules || [];
        fill(box, rules.length ? table(['Rule', 'Bus', '#Matched', '#Rate', 'Targets'],
          rules.map(x => el('tr', { 'data-rule': x.name },
            td(el('strong', {}, x.name)), td(link(x.bus, 'events', x.bus)), tdNum(x.matched),
            td(rate(x.rate), 'num'), td((x.targets || []).join(', ') || '–'))),
          { id: 'rules' }) : notice('info', 'No rule is loaded.'));
      },
    };
  },
};

/* A form that tries a rules text on a bus's log (POST /v1/buses/{bus}/dry-run): per rule, how
 * many events would have matched, with sample ids; nothing is delivered. */
function dryRun() {
  const template = bus => 'bus ' + bus + '\ntarget nowhere file "unused.jsonl"\n' +
    'rule try_me on ' + bus + ' {\n  match type == "order.created"\n  to nowhere\n}\n';
  const text = el('textarea', { id: 'dr-text', rows: 7, cols: 70, spellcheck: 'false', class: 'mono' });
  const since = el('input', { id: 'dr-since', value: '24h', size: 14 });
  const until = el('input', { id: 'dr-until', placeholder: 'now', size: 14 });
  const pickerBox = el('label', {}, 'bus', el('input', { id: 'dr-bus' }));
  const out = el('div', { id: 'dr-out' });
  busNames().then(() => {
    if (!knownBuses.length) return;
    const s = busPicker('dr-bus', knownBuses[0]);
    s.addEventListener('change', () => { if (!text.dataset.edited) text.value = template(s.value); });
    fill(pickerBox, 'bus', s);
    if (!text.value) text.value = template(knownBuses[0]);
  });
  text.addEventListener('input', () => { text.dataset.edited = '1'; });
  const form = el('form', { id: 'dr-form', onsubmit: async ev => {
    ev.preventDefault();
    const bus = document.getElementById('dr-bus').value.trim();
    if (!bus) { fill(out, notice('error', 'Name the bus to try the rules on.')); return; }
    const q = new URLSearchParams();
    if (since.value.trim()) q.set('since', since.value.trim());
    if (until.value.trim()) q.set('until', until.value.trim());
    fill(out, el('p', { class: 'muted' }, 'Trying…'));
    try {
      const r = await api('POST', '/v1/buses/' + encodeURIComponent(bus) + '/dry-run?' + q, text.value);
      fill(out, el('p', {}, num(r.events) + ' events read; nothing delivered.'),
        table(['Rule', '#Would match', 'Sample ids'], (r.rules || []).map(x => el('tr', { 'data-rule': x.name },
          td(el('strong', {}, x.name)), tdNum(x.matched), td((x.samples || []).join(', ') || '–', 'mono'))),
        { id: 'dr-rules' }));
    } catch (e) {
      fill(out, failure(e));
    }
  } },
    el('div', { class: 'filters' }, pickerBox, el('label', {}, 'since', since), el('label', {}, 'until', until),
      el('button', { type: 'submit', id: 'dr-go' }, 'Dry run')),
    text);
  return el('div', {}, el('h2', {}, 'Try rules on the log (dry run)'),
    el('div', { class: 'card' }, el('p', { class: 'muted' },
      'A whole .ebr text, compiled on its own: it declares the bus and the targets its rules name. ' +
      'Its rules are matched against the events of the range; nothing is delivered.'), form, out));
}

/* Events of the log kept between a page of events and the trace it leads to. */
const seenEvents = new Map();

/* Recent events of a bus, searched by source, type and time; paged with the answer's token. */
views.events = {
  mount(root, args, q) {
    const bus = args[0] || knownBuses[0] || '';
    const f = {
      source: el('input', { id: 'q-source', name: 'source', value: q.get('source') || '', placeholder: 'any' }),
      type: el('input', { id: 'q-type', name: 'type', value: q.get('type') || '', placeholder: 'any' }),
      since: el('input', { id: 'q-since', name: 'since', value: q.get('since') || '', placeholder: '24h, 15m or RFC 3339', size: 22 }),
      until: el('input', { id: 'q-until', name: 'until', value: q.get('until') || '', placeholder: 'now', size: 22 }),
      order: el('select', { id: 'q-order', name: 'order' },
        el('option', { value: 'newest', selected: q.get('order') !== 'oldest' }, 'newest first'),
        el('option', { value: 'oldest', selected: q.get('order') === 'oldest' }, 'oldest first')),
      limit: el('input', { id: 'q-limit', name: 'limit', type: 'number', min: 1, max: 1000, value: q.get('limit') || '50', size: 5 }),
    };
    const pickerBox = el('label', {}, 'bus', el('input', { id: 'q-bus', value: bus }));
    const form = el('form', { class: 'filters', id: 'search', onsubmit: ev => {
      ev.preventDefault();
      const p = new URLSearchParams();
      for (const k of ['source', 'type', 'since', 'until', 'limit']) if (f[k].value.trim()) p.set(k, f[k].value.trim());
      if (f.order.value === 'oldest') p.set('order', 'oldest');
      const b = document.getElementById('q-bus').value;
      const hash = viewHref('events', b) + (p.toString() ? '?' + p : '');
      if (location.hash === hash) router(); else location.hash = hash;
    } },
      pickerBox,
      el('label', {}, 'source', f.source), el('label', {}, 'type', f.type),
      el('label', {}, 'since', f.since), el('label', {}, 'until', f.until),
      el('label', {}, 'order', f.order), el('label', {}, 'per page', f.limit),
      el('button', { type: 'submit', id: 'q-go' }, 'Search'));
    const byId = el('input', { id: 'trace-id', placeholder: 'event id', size: 18 });
    const traceForm = el('form', { class: 'filters', onsubmit: ev => {
      ev.preventDefault();
      const b = document.getElementById('q-bus').value;
      if (byId.value.trim()) location.hash = viewHref('trace', b, 'id', byId.value.trim());
    } }, el('label', {}, 'trace an event by id', byId), el('button', { type: 'submit', class: 'secondary' }, 'Trace'));
    const box = el('div');
    const pager = el('div', { class: 'pager' });
    append(root, el('h1', {}, 'Events'), form, traceForm, box, pager);
    busNames().then(() => {
      if (!knownBuses.length) return;
      const cur = document.getElementById('q-bus').value || knownBuses[0];
      fill(pickerBox, 'bus', busPicker('q-bus', cur));
      if (!bus) form.requestSubmit();
    });

    const pages = [null];       /* the 'after' token of each page seen; pages[k] opened page k */
    let page = 0;
    const query = after => {
      const p = new URLSearchParams();
      for (const k of ['source', 'type', 'since', 'until', 'limit', 'order']) if (q.get(k)) p.set(k, q.get(k));
      if (!p.get('limit')) p.set('limit', '50');
      if (after) p.set('after', after);
      return '/v1/buses/' + encodeURIComponent(bus) + '/events?' + p;
    };
    const view = {
      get auto() { return page === 0; },
      async refresh() {
        if (!bus) { fill(box, notice('info', 'Pick a bus.')); return; }
        const at = page;
        const r = await get(query(pages[page]));
        if (at !== page) return;          /* another page was asked for meanwhile */
        const events = r.events || [];
        fill(box, events.length ? table(['#Offset', 'Time', 'ID', 'Source', 'Type', ''],
          events.map(x => {
            const e = x.event || {};
            seenEvents.set(bus + '/' + x.offset, x);
            const go = () => { location.hash = viewHref('trace', bus, x.offset); };
            return el('tr', { class: 'clickable', 'data-offset': x.offset, 'data-id': e.id, onclick: go },
              tdNum(x.offset), td(when(x.time || e.time), 'mono'), td(e.id, 'mono'), td(e.source), td(e.type ?? e['detail-type']),
              td(el('a', { href: viewHref('trace', bus, x.offset), class: 'trace-link' }, 'trace')));
          }), { id: 'events' }) : notice('info', 'No event matches.'));
        pages.length = page + 1;
        pages.push(r.next || undefined);
        fill(pager,
          el('button', { type: 'button', class: 'secondary', id: 'page-first', disabled: page === 0,
            onclick: () => { page = 0; refresh(); } }, '« newest'),
          el('button', { type: 'button', class: 'secondary', id: 'page-prev', disabled: page === 0,
            onclick: () => { page--; refresh(); } }, '‹ previous'),
          el('span', { class: 'muted', id: 'page-no' }, 'page ' + (page + 1)),
          el('button', { type: 'button', class: 'secondary', id: 'page-next', disabled: !r.next,
            onclick: () => { page++; refresh(); } }, 'next ›'));
      },
    };
    return view;
  },
};

/* One event's trace: received, matched, every attempt, the outcome per (rule, target), and for
 * the rules that did not match, why. */
views.trace = {
  mount(root, args, q) {
    const bus = args[0];
    const byId = args[1] === 'id';
    const path = '/v1/buses/' + encodeURIComponent(bus) + (byId
      ? '/events/' + encodeURIComponent(args[2]) + '/trace?explain=1' + (q.get('source') ? '&source=' + encodeURIComponent(q.get('source')) : '')
      : '/offsets/' + encodeURIComponent(args[1]) + '/trace?explain=1');
    const box = el('div', { id: 'trace' });
    const title = el('span', { class: 'mono' }, byId ? args[2] : 'offset ' + args[1]);
    append(root, el('h1', {}, 'Trace of ', title, el('span', { class: 'muted' }, ' on ' + bus)), box);
    return {
      async refresh() {
        let t;
        try {
          t = await get(path);
        } catch (e) {
          if (e.status === 404 && !/no such endpoint/.test(e.message)) {
            fill(box, notice('info', 'No trace of this event: ' + e.message)); return;
          }
          throw e;
        }
        const outcomes = t.outcomes || [];
        fill(title, t.id + ' (offset ' + num(t.offset) + ')');
        const facts = el('dl', { class: 'facts' },
          el('dt', {}, 'id'), el('dd', { class: 'mono', id: 'trace-event-id' }, t.id),
          el('dt', {}, 'source'), el('dd', {}, t.source), el('dt', {}, 'type'), el('dd', {}, t.type),
          el('dt', {}, 'bus / offset'), el('dd', {}, link(t.bus, 'events', t.bus), ' / ' + num(t.offset)),
          el('dt', {}, 'outcome'), el('dd', { id: 'trace-outcomes' }, outcomes.length
            ? outcomes.map(o => el('span', { class: 'outcome', 'data-rule': o.rule, 'data-target': o.target, 'data-state': o.state },
              badge(String(o.state).replace('_', '-'), o.state), ' ' + o.rule + ' → ' + o.target + '  '))
            : el('span', { class: 'muted' }, 'no rule matched')));
        fill(box, el('div', { class: 'card' }, facts), el('h2', {}, 'Timeline'), timeline(t));
        if ((t.not_matched || []).length)
          append(box, el('h2', {}, 'Rules that did not match'),
            table(['Rule', 'Why'], t.not_matched.map(n => el('tr', { 'data-rule': n.rule }, td(n.rule), td(n.why, 'mono'))),
              { id: 'not-matched' }));
        const seen = seenEvents.get(t.bus + '/' + t.offset);
        if (seen && seen.event)
          append(box, el('h2', {}, 'The event'), el('pre', { class: 'json' }, JSON.stringify(seen.event, null, 2)));
      },
    };
  },
};

/* The trace as a list in time: received, matched, each attempt, each outcome. */
function timeline(t) {
  const items = [];
  const rcv = t.received || {};
  items.push(el('li', { class: 'received' }, el('span', { class: 'when' }, when(rcv.time)),
    el('span', { class: 'what' }, 'received'), rcv.producer ? 'from ' + rcv.producer : ''));
  for (const m of t.matched || [])
    items.push(el('li', { class: 'matched' }, el('span', { class: 'when' }, ''),
      el('span', { class: 'what' }, 'matched'), m.rule + ' → ' + m.target,
      typeof m.payload_bytes === 'number' ? el('span', { class: 'muted' }, ' (payload ' + bytes(m.payload_bytes) + ')') : ''));
  const attempts = (t.attempts || []).slice().sort((a, b) => String(a.time).localeCompare(String(b.time)));
  for (const a of attempts) {
    /* (a target that is not http has no status: its error alone tells) */
    const hasStatus = typeof a.status === 'number' && a.status > 0;
    const good = !a.error && (!hasStatus || (a.status >= 200 && a.status < 300));
    items.push(el('li', { class: 'attempt ' + (good ? 'ok' : 'bad'), 'data-target': a.target, 'data-status': a.status },
      el('span', { class: 'when' }, when(a.time)),
      el('span', { class: 'what' }, 'attempt ' + num(a.attempt)), a.rule + ' → ' + a.target + ': ',
      badge(hasStatus ? 'status ' + a.status : good ? 'done' : 'failed', good ? 'ok' : 'bad'),
      typeof a.latency_ms === 'number' ? el('span', { class: 'muted' }, ' ' + a.latency_ms + ' ms') : '',
      a.error ? el('div', { class: 'error mono' }, a.error) : ''));
  }
  for (const o of t.outcomes || [])
    items.push(el('li', { class: 'outcome ' + (o.state === 'delivered' ? 'ok' : o.state === 'dead_lettered' ? 'bad' : 'warn') },
      el('span', { class: 'when' }, ''), el('span', { class: 'what' }, o.state.replace('_', '-')), o.rule + ' → ' + o.target));
  return el('ol', { class: 'timeline', id: 'timeline' }, items);
}

/* Targets: deliveries that succeeded, failed, were retried or dead-lettered, what waits, and
 * the last errors. */
views.targets = {
  mount(root) {
    const box = el('div');
    append(root, el('h1', {}, 'Targets'), box);
    const open = new Set();
    return {
      async refresh() {
        const r = await get('/v1/targets');
        const targets = r.targets || [];
        box.querySelectorAll('details[open]').forEach(d => open.add(d.dataset.target));
        box.querySelectorAll('details:not([open])').forEach(d => open.delete(d.dataset.target));
        fill(box, targets.length ? table(
          ['Target', 'Kind', 'Health', '#Succeeded', '#Failed', '#Retried', '#Dead-lettered', '#Queued', '#Lag', 'Last error'],
          targets.map(x => {
            const errors = x.errors || [];
            const health = x.dead_lettered > 0 ? badge('dead letters', 'bad')
              : x.last_error ? badge('errors', 'warn') : badge('ok');
            return el('tr', { 'data-target': x.name },
              td(el('strong', {}, x.name)), td(x.kind), td(health),
              tdNum(x.succeeded), tdNum(x.failed), tdNum(x.retried), tdNum(x.dead_lettered),
              tdNum(x.queued), tdNum(x.lag),
              td(x.last_error ? [el('span', { class: 'error' }, x.last_error.message),
                el('div', { class: 'muted' }, when(x.last_error.time)),
                errors.length ? el('details', { 'data-target': x.name, open: open.has(x.name) },
                  el('summary', {}, errors.length + ' recent error' + (errors.length > 1 ? 's' : '')),
                  el('ul', { class: 'errors' }, errors.map(e => el('li', {},
                    el('span', { class: 'muted' }, when(e.time) + ' ' + (e.rule || '') + ': '), e.message)))) : '']
                : el('span', { class: 'muted' }, 'none')));
          }), { id: 'targets' }) : notice('info', 'No target is declared.'));
      },
    };
  },
};

/* Replays of every bus (or one) with their progress; a form to start one, a button to cancel. */
views.replays = {
  mount(root, args) {
    const only = args[0] || '';
    const msg = el('div', { id: 'replay-msg' });
    const f = {
      name: el('input', { id: 'r-name', placeholder: '(generated)', size: 14 }),
      since: el('input', { id: 'r-since', value: '1h', required: true, size: 22 }),
      until: el('input', { id: 'r-until', placeholder: 'now', size: 22 }),
      rule: el('input', { id: 'r-rule', placeholder: 'every rule', size: 14 }),
      target: el('input', { id: 'r-target', placeholder: 'every target', size: 14 }),
      rate: el('input', { id: 'r-rate', type: 'number', min: 0, placeholder: 'default', size: 8 }),
    };
    const pickerBox = el('label', {}, 'bus', el('input', { id: 'r-bus', value: only }));
    const form = el('form', { class: 'filters', id: 'replay-form', onsubmit: async ev => {
      ev.preventDefault();
      const bus = document.getElementById('r-bus').value.trim();
      if (!bus) { fill(msg, notice('error', 'Name the bus to replay.')); return; }
      const body = { since: f.since.value.trim() };
      for (const k of ['name', 'until', 'rule', 'target']) if (f[k].value.trim()) body[k] = f[k].value.trim();
      if (f.rate.value.trim()) body.rate = Number(f.rate.value);
      try {
        const r = await api('POST', '/v1/buses/' + encodeURIComponent(bus) + '/replays', body);
        fill(msg, notice('info', 'Replay ', el('strong', {}, r && r.name ? r.name : ''), ' started on ' + bus + '.'));
        refresh();
      } catch (e) {
        fill(msg, failure(e));
      }
    } },
      pickerBox, el('label', {}, 'name', f.name), el('label', {}, 'since', f.since), el('label', {}, 'until', f.until),
      el('label', {}, 'rule', f.rule), el('label', {}, 'target', f.target),
      el('label', { title: 'events read a second at most (0: no cap)' }, 'rate cap /s', f.rate),
      el('button', { type: 'submit', id: 'r-start' }, 'Start replay'));
    const box = el('div');
    append(root, el('h1', {}, 'Replays'), el('div', { class: 'card' },
      el('p', { class: 'muted' }, 'A replay runs a time range of a bus\'s log through the current rules again ' +
        '(one rule or one target if named) and delivers what they route; replayed events carry a "replay" attribute.'),
      form, msg), box);
    busNames().then(() => {
      if (knownBuses.length) fill(pickerBox, 'bus', busPicker('r-bus', only || knownBuses[0]));
    });
    const cancel = async (bus, name) => {
      try {
        const r = await api('DELETE', '/v1/buses/' + encodeURIComponent(bus) + '/replays/' + encodeURIComponent(name));
        fill(msg, notice('info', r && r.state && r.state !== 'cancelled'
          ? 'Replay ' + name + ' had ended (' + r.state + ') before it could be cancelled.'
          : 'Replay ' + name + ' cancelled.'));
      } catch (e) {
        fill(msg, failure(e));
      }
      refresh();
    };
    const view = {
      async refresh() {
        let buses = [only];
        if (!only) {                    /* every bus's: which are they? */
          buses = ((await get('/v1/buses')).buses || []).map(b => b.name);
          knownBuses = buses;
        }
        const lists = await Promise.all(buses.map(b => get('/v1/buses/' + encodeURIComponent(b) + '/replays')));
        const replays = lists.flatMap(l => l.replays || []);
        replays.sort((a, b) => String(b.started).localeCompare(String(a.started)));
        fill(box, replays.length ? table(
          ['Replay', 'Bus', 'State', 'Progress', 'Range', 'Rule / target', '#Read', '#Matched', '#Delivered', '#Failed', '#Rate', 'Started', ''],
          replays.map(x => el('tr', { 'data-replay': x.name, 'data-state': x.state },
            td(el('strong', {}, x.name)), td(x.bus),
            td([badge(x.state), x.error ? el('div', { class: 'error' }, 'last error: ' + x.error) : '']),
            td(progress(x)), td([when(x.since), el('br'), '– ' + (x.until ? when(x.until) : 'now')]),
            td((x.rule || 'every rule') + ' / ' + (x.target || 'every target')),
            tdNum(x.events_read), tdNum(x.matched), tdNum(x.delivered), tdNum(x.failed), td(rate(x.rate), 'num'),
            td([when(x.started), x.finished ? el('div', { class: 'muted' }, 'ended ' + when(x.finished)) : '']),
            td(x.state === 'running' ? el('button', { type: 'button', class: 'danger cancel',
              onclick: () => cancel(x.bus, x.name) }, 'Cancel') : ''))),
          { id: 'replays' }) : notice('info', 'No replay yet.'));
      },
    };
    return view;
  },
};

/* A replay's progress: how far its position is from first to last. */
function progress(x) {
  if (typeof x.progress === 'number') {        /* (ebd gives it: 0 to 1) */
    const pct = x.state === 'done' ? 100 : Math.floor(100 * x.progress);
    return el('span', { class: 'progress', 'data-pct': pct }, el('progress', { max: 100, value: pct }), ' ' + pct + '%');
  }
  const span = typeof x.last === 'number' && typeof x.first === 'number' ? x.last - x.first + 1 : 0;
  let done = x.state === 'done' ? span : typeof x.position === 'number' ? x.position - x.first : 0;
  if (done < 0) done = 0;
  if (done > span) done = span;
  const pct = span > 0 ? Math.round(100 * done / span) : (x.state === 'done' ? 100 : 0);
  return el('span', { class: 'progress', 'data-pct': pct },
    el('progress', { max: 100, value: pct }), ' ' + pct + '%');
}

/* Schemas inferred from traffic per (bus, source, type), each with its JSON Schema. */
views.schemas = {
  mount(root) {
    const filter = el('input', { id: 's-filter', placeholder: 'filter by source or type', size: 30 });
    const box = el('div');
    let last = [];
    const open = new Set();
    const draw = () => {
      box.querySelectorAll('details[open]').forEach(d => open.add(d.dataset.key));
      box.querySelectorAll('details:not([open])').forEach(d => open.delete(d.dataset.key));
      const word = filter.value.trim().toLowerCase();
      const shown = last.filter(s => !word || (s.source + ' ' + s.type + ' ' + s.bus).toLowerCase().includes(word));
      fill(box, shown.length ? table(['Bus', 'Source', 'Type', '#Version', '#Events', 'Updated', 'Schema'],
        shown.map(s => {
          const key = s.bus + '\n' + s.source + '\n' + s.type;
          return el('tr', { 'data-source': s.source, 'data-type': s.type },
            td(s.bus), td(s.source), td(s.type), tdNum(s.version), tdNum(s.events), td(when(s.updated), 'mono'),
            td(el('details', { 'data-key': key, open: open.has(key) }, el('summary', {}, 'JSON Schema'),
              el('pre', { class: 'json' }, JSON.stringify(s.schema, null, 2)))));
        }), { id: 'schemas' }) : notice('info', last.length ? 'No schema matches.' : 'No schema discovered yet.'));
    };
    filter.addEventListener('input', draw);
    append(root, el('h1', {}, 'Schemas'), el('form', { class: 'filters', onsubmit: e => e.preventDefault() },
      el('label', {}, 'filter', filter)), box);
    return {
      async refresh() {
        const r = await get('/v1/schemas');
        last = r.schemas || [];
        draw();
      },
    };
  },
};

/* ---- the router and the refresh loop ------------------------------------------------------ */

let current = null;       /* { view, root, busy } */

/* Mounts the view the address names. */
function router() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(p => p.length).map(decodeURIComponent);
  const name = views[parts[0]] ? parts[0] : 'buses';
  const root = document.getElementById('view');
  root.replaceChildren();
  for (const a of document.querySelectorAll('#nav a'))
    a.classList.toggle('active', a.dataset.view === name);
  const body = el('div', { 'data-view': name });
  root.appendChild(body);
  const status = el('div', { class: 'view-error' });
  root.insertBefore(status, body);
  current = { view: views[name].mount(body, parts.slice(1), new URLSearchParams(qs || '')), status, busy: false };
  document.title = 'ebr console · ' + name;
  refresh();
}

/* Fetches the current view's figures again, one fetch at a time (asked for during one, it
 * runs once more after it); failures show above the view. */
async function refresh() {
  const c = current;
  if (!c) return;
  if (c.busy) { c.again = true; return; }
  c.busy = true;
  do {
    c.again = false;
    try {
      await c.view.refresh();
      fill(c.status);
      document.getElementById('updated').textContent = 'updated ' + new Date().toLocaleTimeString('en-GB');
    } catch (e) {
      if (c === current) fill(c.status, failure(e));
    }
  } while (c.again && c === current);
  c.busy = false;
}

/* The refresh loop's beat: refreshes unless paused, hidden, asking for the token, or the view
 * says not now (an older page of events). */
function tick() {
  if (document.getElementById('auto').checked && !document.hidden && !auth.asking &&
      current && current.view.auto !== false)
    refresh();
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('auth-form').addEventListener('submit', ev => {
    ev.preventDefault();
    setToken(document.getElementById('auth-token').value.trim());
    document.getElementById('auth-token').value = '';
    document.getElementById('auth').hidden = true;
    auth.asking = false;
    router();
  });
  document.getElementById('forget').addEventListener('click', () => { setToken(null); router(); });
  setToken(auth.token);
  window.addEventListener('hashchange', router);
  router();
  setInterval(tick, REFRESH_MS);
});
