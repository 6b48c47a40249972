// The weir dashboard: polls /job, /checkpoints and /exceptions once a second and draws the job
// graph, the operator detail, throughput and lag charts, the checkpoint history and failures.
// No libraries: the page must work offline, from the binary alone.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const HISTORY = 300; // samples kept per operator: 5 minutes at one a second
const token = new URLSearchParams(location.search).get('token');
const headers = token ? { Authorization: 'Bearer ' + token } : {};

const view = { selected: null, checkpoint: null, poll: 0, history: new Map(), job: null, checkpoints: [] };

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US'));
const fmt1 = (n) => (n === null || n === undefined ? '–' : Number(n).toFixed(1));

function bytes(n) {
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, u = 0;
  while (v >= 1024 && u + 1 < units.length) { v /= 1024; u++; }
  return v.toFixed(1) + ' ' + units[u];
}

function utc(ms) {
  if (ms === null || ms === undefined) return '–';
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
}

function watermark(ms) {
  if (ms === null || ms === undefined || ms <= -9223372036854775000) return 'none';
  if (ms >= 9223372036854775000) return 'end of input';
  return utc(ms);
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || m ? m + 'm ' : '') + (s % 60) + 's';
}

function el(tag, attrs, ...children) {
  const e = tag.startsWith('svg:') ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function get(path) {
  const r = await fetch(path, { headers, cache: 'no-store' });
  if (!r.ok) throw new Error(path + ' answered ' + r.status);
  return r.json();
}

// What an operator mostly does: the largest of busy, backpressured and idle time.
function state(op) {
  const parts = [['busy', op.busy_ms_per_sec], ['backpressured', op.backpressured_ms_per_sec], ['idle', op.idle_ms_per_sec]];
  parts.sort((a, b) => b[1] - a[1]);
  return parts[0][1] > 0 ? parts[0][0] : 'idle';
}

// Tasks (chains) in layers: a task's layer is the longest path to it from a source task.
function layout(job) {
  const tasks = new Map();
  for (const op of job.operators) {
    if (!tasks.has(op.task)) tasks.set(op.task, { id: op.task, ops: [], layer: 0 });
    tasks.get(op.task).ops.push(op);
  }
  const taskOf = new Map(job.operators.map((o) => [o.uid, o.task]));
  const between = job.edges.filter((e) => taskOf.get(e.from) !== taskOf.get(e.to));
  for (let round = 0; round < tasks.size; round++) {
    for (const e of between) {
      const a = tasks.get(taskOf.get(e.from)), b = tasks.get(taskOf.get(e.to));
      b.layer = Math.max(b.layer, a.layer + 1);
    }
  }
  const layers = [];
  for (const t of tasks.values()) (layers[t.layer] = layers[t.layer] || []).push(t);
  const W = 230, GAP_X = 90, ROW = 30, HEAD = 20, GAP_Y = 24;
  let height = 0;
  layers.forEach((ts, i) => {
    let y = 10;
    for (const t of ts) {
      t.x = 10 + i * (W + GAP_X);
      t.y = y;
      t.w = W;
      t.h = HEAD + t.ops.length * ROW + 6;
      y += t.h + GAP_Y;
    }
    height = Math.max(height, y);
  });
  const pos = new Map();
  for (const t of tasks.values()) {
    t.ops.forEach((op, i) => pos.set(op.uid, { x: t.x + 6, y: t.y + HEAD + i * ROW, w: W - 12, h: ROW - 4 }));
  }
  return { tasks: [...tasks.values()], pos, between, width: 20 + layers.length * (W + GAP_X), height };
}

function drawGraph(job) {
  const svg = $('graph');
  const g = layout(job);
  svg.replaceChildren();
  svg.setAttribute('viewBox', `0 0 ${Math.max(g.width, 300)} ${Math.max(g.height, 60)}`);
  svg.setAttribute('height', Math.max(g.height, 60));
  svg.append(el('svg:defs', {}, el('svg:marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, el('svg:path', { d: 'M0,0 L10,5 L0,10 z', fill: '#7d8794' }))));
  const byUid = new Map(job.operators.map((o) => [o.uid, o]));
  for (const t of g.tasks) {
    const box = el('svg:g', { class: 'task', 'data-task': t.id });
    box.append(el('svg:rect', { class: 'box', x: t.x, y: t.y, width: t.w, height: t.h, rx: 6 }));
    const p = t.ops[0].parallelism;
    box.append(el('svg:text', { class: 'task-label', x: t.x + 8, y: t.y + 14, text: `task ${t.id} · parallelism ${p}` }));
    t.ops.forEach((op, i) => {
      const r = g.pos.get(op.uid);
      if (i > 0) {
        box.append(el('svg:g', { class: 'chain', 'data-from': t.ops[i - 1].uid, 'data-to': op.uid },
          el('svg:line', { x1: r.x + 14, y1: r.y - 4, x2: r.x + 14, y2: r.y })));
      }
      const s = state(byUid.get(op.uid));
      const node = el('svg:g', { class: `op state-${s}` + (view.selected === op.uid ? ' selected' : ''),
        'data-uid': op.uid, 'data-state': s, onclick: () => select(op.uid) });
      node.append(el('svg:title', { text: `${op.uid} (${op.name}): ${s}` }));
      node.append(el('svg:rect', { x: r.x, y: r.y, width: r.w, height: r.h, rx: 3 }));
      node.append(el('svg:text', { x: r.x + 8, y: r.y + 17, text: op.uid }));
      node.append(el('svg:text', { class: 'rate', x: r.x + r.w - 8, y: r.y + 17, 'text-anchor': 'end',
        text: fmt(op.records_in_per_sec || op.records_out_per_sec) + '/s' }));
      box.append(node);
    });
    svg.append(box);
  }
  for (const e of g.between) {
    const a = g.pos.get(e.from), b = g.pos.get(e.to);
    const x1 = a.x + a.w + 6, y1 = a.y + a.h / 2, x2 = b.x - 7, y2 = b.y + b.h / 2;
    const mx = (x1 + x2) / 2;
    const edge = el('svg:g', { class: 'edge', 'data-from': e.from, 'data-to': e.to, 'data-partition': e.partition });
    edge.append(el('svg:path', { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    edge.append(el('svg:text', { x: mx, y: (y1 + y2) / 2 - 5, 'text-anchor': 'middle', text: e.partition }));
    svg.append(edge);
  }
}

function select(uid) {
  view.selected = uid;
  if (view.job) render(view.job, view.checkpoints, null);
}

function drawDetail(job) {
  const section = $('operator-detail');
  const op = job.operators.find((o) => o.uid === view.selected);
  section.hidden = !op;
  if (!op) return;
  $('detail-uid').textContent = `${op.uid} (${op.name}), parallelism ${op.parallelism}`;
  const rows = op.subtasks.map((t) => el('tr', { 'data-subtask': t.subtask },
    el('td', { text: t.subtask }), el('td', { class: 'records-in', text: fmt(t.records_in) }),
    el('td', { class: 'records-out', text: fmt(t.records_out) }), el('td', { text: fmt(t.records_in_per_sec) }),
    el('td', { text: fmt(t.records_out_per_sec) }), el('td', { text: fmt(t.busy_ms_per_sec) }),
    el('td', { text: fmt(t.backpressured_ms_per_sec) }), el('td', { text: fmt(t.idle_ms_per_sec) }),
    el('td', { text: Math.round(t.input_fill * 100) + ' %' }), el('td', { text: watermark(t.watermark) }),
    el('td', { text: lag(job, t.watermark) })));
  section.querySelector('tbody').replaceChildren(...rows);
}

function lag(job, wm) {
  if (wm === null || wm === undefined || wm <= -9223372036854775000 || wm >= 9223372036854775000) return '–';
  return seconds((job.now_ms - wm) / 1000);
}

// A lag: seconds with a decimal while short, days to seconds when long.
function seconds(s) {
  return Math.abs(s) < 60 ? s.toFixed(1) + ' s' : (s < 0 ? '-' : '') + duration(Math.abs(s) * 1000);
}

function remember(job) {
  for (const op of job.operators) {
    const h = view.history.get(op.uid) || [];
    const wm = op.watermark;
    const finite = wm !== null && wm !== undefined && wm > -9223372036854775000 && wm < 9223372036854775000;
    h.push({ rate: op.records_in_per_sec || op.records_out_per_sec, lag: finite ? (job.now_ms - wm) / 1000 : null });
    if (h.length > HISTORY) h.shift();
    view.history.set(op.uid, h);
  }
}

function line(values, cls, w, h) {
  const present = values.map((v, i) => [i, v]).filter(([, v]) => v !== null);
  if (present.length === 0) return null;
  const max = Math.max(1e-9, ...present.map(([, v]) => v));
  // The newest sample at the right edge, older ones to its left.
  const x = (i) => w - ((values.length - 1 - i) / (HISTORY - 1)) * w;
  const pts = present.map(([i, v]) => `${x(i)},${h - (v / max) * (h - 4) - 2}`).join(' ');
  return el('svg:polyline', { class: cls, points: pts });
}

function drawCharts(job) {
  const charts = job.operators.map((op) => {
    const h = view.history.get(op.uid) || [];
    const now = h.length ? h[h.length - 1] : { rate: 0, lag: null };
    const svg = el('svg:svg', { viewBox: '0 0 300 60', preserveAspectRatio: 'none' });
    const rate = line(h.map((p) => p.rate), 'rate', 300, 60);
    const l = line(h.map((p) => p.lag), 'lag', 300, 60);
    if (rate) svg.append(rate);
    if (l) svg.append(l);
    const lagText = now.lag === null ? '' : ` · lag ${seconds(now.lag)}`;
    return el('div', { class: 'chart', 'data-uid': op.uid },
      el('h3', {}, op.uid + ' ', el('span', { class: 'now', text: `${fmt(now.rate)} records/s${lagText}` })), svg);
  });
  $('charts').replaceChildren(...charts);
}

function drawCheckpoints(cps, job) {
  const recent = cps.slice(-100).reverse();
  const rows = recent.map((c) => el('tr', { 'data-id': c.id, class: view.checkpoint === c.id ? 'selected' : '',
    onclick: () => { view.checkpoint = c.id; drawCheckpoints(view.checkpoints, view.job); } },
  el('td', { text: c.id }), el('td', { class: 'text status status-' + c.status.replace(' ', '.'), text: c.status + (c.terminal ? ' (final)' : '') }),
  el('td', { class: 'text', text: utc(c.trigger_time) }), el('td', { class: 'duration', text: fmt(c.duration_ms) }),
  el('td', { class: 'size', text: bytes(c.size_bytes) }), el('td', { class: 'incremental', text: bytes(c.incremental_bytes) }),
  el('td', { text: fmt1(c.alignment_ms) }), el('td', { text: fmt1(c.sync_ms) }), el('td', { text: fmt1(c.async_ms) }),
  el('td', { class: 'wrap', text: c.savepoint || c.error || '' })));
  $('checkpoints').querySelector('tbody').replaceChildren(...rows);
  drawCheckpointChart(cps.slice(-60));
  const detail = $('checkpoint-detail');
  const chosen = cps.find((c) => c.id === view.checkpoint);
  detail.hidden = !chosen;
  if (chosen) {
    $('checkpoint-detail-id').textContent = chosen.id;
    detail.querySelector('tbody').replaceChildren(...chosen.subtasks.map((s) => el('tr', {},
      el('td', { text: s.operator }), el('td', { text: s.subtask }), el('td', { text: fmt1(s.ack_ms) }),
      el('td', { text: fmt1(s.alignment_ms) }), el('td', { text: fmt1(s.sync_ms) }), el('td', { text: fmt1(s.async_ms) }),
      el('td', { text: bytes(s.size_bytes) }), el('td', { text: bytes(s.incremental_bytes) }))));
  }
  const r = job && job.restored_from;
  $('restore').textContent = r
    ? `Restored from ${r.kind} ${r.checkpoint_id} (${r.path}) at ${utc(r.time)} UTC.`
    : 'Started without a restore.';
  const last = [...cps].reverse().find((c) => c.status === 'completed');
  $('last-checkpoint').textContent = last ? `${last.id}, ${fmt(last.duration_ms)} ms, ${bytes(last.size_bytes)}` : '–';
}

// Durations as bars, sizes as a line, for the last checkpoints.
function drawCheckpointChart(cps) {
  const svg = $('checkpoint-chart');
  svg.replaceChildren();
  svg.setAttribute('viewBox', '0 0 600 90');
  svg.setAttribute('preserveAspectRatio', 'none');
  if (cps.length === 0) return;
  const maxD = Math.max(1, ...cps.map((c) => c.duration_ms));
  const maxS = Math.max(1, ...cps.map((c) => c.size_bytes));
  const w = 600 / 60;
  svg.setAttribute('viewBox', '0 0 600 82');
  cps.forEach((c, i) => {
    const h = (c.duration_ms / maxD) * 70;
    svg.append(el('svg:rect', { class: c.status === 'completed' ? 'duration' : 'failed', x: i * w + 1, y: 80 - h,
      width: w - 2, height: Math.max(h, 1) }, el('svg:title', { text: `${c.id}: ${c.duration_ms} ms, ${bytes(c.size_bytes)}` })));
  });
  const pts = cps.map((c, i) => `${i * w + w / 2},${80 - (c.size_bytes / maxS) * 70}`).join(' ');
  svg.append(el('svg:polyline', { points: pts }));
  $('checkpoint-chart-caption').textContent =
    `last ${cps.length} checkpoints — bars: duration (highest ${fmt(maxD)} ms), line: size (largest ${bytes(maxS)})`;
}

function drawExceptions(list) {
  if (!list) return;
  const box = $('exceptions');
  if (list.length === 0) {
    box.replaceChildren(el('p', { class: 'none', text: 'No failures in this run.' }));
    return;
  }
  box.replaceChildren(...[...list].reverse().map((x) => el('div', { class: 'exception' },
    el('div', {}, el('span', { class: 'when', text: utc(x.time) + ' UTC — ' }),
      el('strong', { text: x.restarting ? `restarting (attempt ${x.attempt})` : 'failed, not restarting' })),
    el('ol', {}, ...x.errors.map((e) => el('li', { text: e }))))));
}

function render(job, cps, exceptions) {
  view.job = job;
  view.checkpoints = cps;
  $('job-name').textContent = job.name;
  document.title = 'weir · ' + job.name;
  $('uptime').textContent = duration(job.uptime_ms);
  $('job-watermark').textContent = watermark(job.watermark);
  drawGraph(job);
  drawDetail(job);
  drawCharts(job);
  drawCheckpoints(cps, job);
  drawExceptions(exceptions);
}

async function tick() {
  try {
    const [job, cps, exceptions] = await Promise.all([get('job'), get('checkpoints'), get('exceptions')]);
    remember(job);
    render(job, cps, exceptions);
    view.poll += 1;
    // Tests match what the page shows with the answers of this poll.
    document.body.dataset.poll = view.poll;
    $('connection').textContent = 'live';
    $('connection').className = 'connection';
  } catch (e) {
    $('connection').textContent = 'not connected: ' + e.message;
    $('connection').className = 'connection down';
  }
  setTimeout(tick, 1000);
}

$('savepoint').addEventListener('click', async () => {
  const button = $('savepoint'), status = $('savepoint-status');
  button.disabled = true;
  status.textContent = 'taking a savepoint…';
  status.removeAttribute('data-path');
  try {
    const r = await fetch('savepoints', { method: 'POST', headers });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status);
    status.textContent = 'savepoint: ' + body.path;
    status.dataset.path = body.path;
  } catch (e) {
    status.textContent = 'savepoint failed: ' + e.message;
  } finally {
    button.disabled = false;
  }
});
$('detail-close').addEventListener('click', () => select(null));
tick();
