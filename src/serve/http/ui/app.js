// caliper's dashboard (issue 21): polls the server's own JSON endpoints and /metrics, draws the
// live reliability diagram and keeps rates over time in this page. No framework, no build step.
// Query parameters: ?model=NAME picks the model, ?interval=MS the poll period (default 2000).
'use strict';

const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(250, Number(params.get('interval')) || 2000);
const HISTORY_MS = 5 * 60 * 1000; // what the rate charts show
const LATENCY_WINDOW_MS = 60 * 1000; // latency percentiles over this much of the history
const BOOTSTRAP = 200; // resamples of the ECE interval
const BOOTSTRAP_EVERY_MS = 10 * 1000; // at most this often, and only when the window changed
const DRIFT_ALPHA = 0.01; // a p-value below this reads as drift

const state = {
  key: sessionStorage.getItem('caliper-api-key') || '',
  model: null,
  history: [], // one snapshot of the model's counters per poll
  intervals: null, // last bootstrap intervals, with the window they were computed on
  bootstrapAt: 0,
  timer: null,
};

const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';

/** An element with attributes and children (strings become text). */
function el(tag, attrs = {}, ...children) {
  const svg = ['svg', 'g', 'rect', 'line', 'polyline', 'text', 'title', 'path'].includes(tag);
  const e = svg ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

/** A fraction as a percentage; the ECE test formats it the same way (two decimals). */
const pct = (x, digits = 2) => (x == null ? '—' : (x * 100).toFixed(digits) + '%');
/** A probability: like pct, but never rounded to a certain 0% or 100% it is not. */
const prob = (x) => (x > 0 && x < 1e-4 ? '<0.01%' : x < 1 && x > 0.9999 ? '>99.99%' : pct(x));
const num = (x, digits = 4) => (x == null ? '—' : Number(x).toFixed(digits));
const ms = (s) => (s == null ? '—' : s < 0.001 ? (s * 1e6).toFixed(0) + ' µs' : (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + ' ms');

function setText(id, text) {
  $(id).textContent = text;
}

function kv(id, rows) {
  $(id).replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

function status(text, bad = false) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('bad', bad);
}

// ---- HTTP -------------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (state.key) headers.Authorization = 'Bearer ' + state.key;
  const r = await fetch(path, { ...init, headers });
  if (r.status === 401) throw new Unauthorized('this server needs its API key');
  const text = await r.text();
  if (!r.ok) {
    let msg = text;
    try {
      msg = JSON.parse(text).error || text;
    } catch (_) {
      // not JSON: keep the text
    }
    throw new Error(`${r.status}: ${msg}`);
  }
  return text;
}

const apiJson = async (path, init) => JSON.parse(await api(path, init));

// ---- Prometheus text --------------------------------------------------------------------------

/** The samples of a Prometheus text exposition: [{name, labels, value}]. */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    out.push({ name: m[1], labels, value: parseValue(m[3]) });
  }
  return out;
}

function parseValue(s) {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  return Number(s);
}

function total(samples, name, match) {
  return samples
    .filter((s) => s.name === name && match(s.labels))
    .reduce((a, s) => a + s.value, 0);
}

/** Cumulative histogram buckets [[le, count]] summed over the series `match` accepts. */
function buckets(samples, name, match) {
  const by = new Map();
  for (const s of samples) {
    if (s.name !== name + '_bucket' || !match(s.labels)) continue;
    const le = parseValue(s.labels.le);
    by.set(le, (by.get(le) || 0) + s.value);
  }
  return [...by.entries()].sort((a, b) => a[0] - b[0]);
}

/** Quantile of a cumulative histogram, interpolated within the bucket (as histogram_quantile). */
function quantile(q, bs) {
  const n = bs.length ? bs[bs.length - 1][1] : 0;
  if (!n) return null;
  const rank = q * n;
  let [lo, below] = [0, 0];
  for (const [le, c] of bs) {
    if (c >= rank) {
      if (le === Infinity) return lo;
      return lo + (le - lo) * ((rank - below) / (c - below || 1));
    }
    [lo, below] = [le, c];
  }
  return lo;
}

const diff = (a, b) => b.map(([le, c], i) => [le, c - (a[i] ? a[i][1] : 0)]);

// ---- Polling ----------------------------------------------------------------------------------

async function loadModels() {
  const { models } = await apiJson('/v1/models');
  const select = $('model');
  select.replaceChildren(...models.map((m) => el('option', { value: m.name }, m.name)));
  const wanted = params.get('model');
  state.models = models;
  state.model = models.some((m) => m.name === wanted) ? wanted : models.length ? models[0].name : null;
  if (state.model) select.value = state.model;
  showModelMeta();
}

function showModelMeta() {
  const m = (state.models || []).find((x) => x.name === state.model);
  setText('model-meta', m ? `v${m.version} · ${m.labels.length} classes · ${m.calibrated ? m.calibration_method : 'uncalibrated'}` : '');
}

async function poll() {
  clearTimeout(state.timer);
  try {
    if (!state.models) await loadModels();
    if (state.model) {
      const model = state.model;
      const [monitor, metrics] = await Promise.all([
        apiJson(`/v1/models/${encodeURIComponent(model)}/monitor`),
        api('/metrics'),
      ]);
      if (model === state.model) {
        showMonitor(monitor);
        showMetrics(parseMetrics(metrics));
        maybeBootstrap(monitor);
      }
    }
    status('live · ' + new Date().toLocaleTimeString());
  } catch (e) {
    if (e instanceof Unauthorized) $('key-form').hidden = false;
    status(e.message, true);
  }
  state.timer = setTimeout(poll, POLL_MS);
}

/** Bootstrap intervals cost the server CPU: fetched only when the window changed, at most every
 * BOOTSTRAP_EVERY_MS. */
async function maybeBootstrap(monitor) {
  const live = monitor.live;
  const now = Date.now();
  if (!live || live.labelled < 2 || !live.full) return;
  if (state.intervals && state.intervals.labelled === live.labelled && state.intervals.ece === live.ece) return;
  if (now - state.bootstrapAt < BOOTSTRAP_EVERY_MS) return;
  state.bootstrapAt = now;
  const model = state.model;
  try {
    const r = await apiJson(`/v1/models/${encodeURIComponent(model)}/monitor?bootstrap=${BOOTSTRAP}`);
    if (model === state.model && r.live) {
      state.intervals = { labelled: r.live.labelled, ece: r.live.ece, by: r.live.intervals || {} };
      showIntervals();
    }
  } catch (_) {
    // Busy (429) or gone: the point figures still show; the next change retries.
  }
}

function showIntervals() {
  const iv = state.intervals ? state.intervals.by : {};
  const fmt = (i) => (i ? `95% interval: ${pct(i.low)} – ${pct(i.high)}` : '');
  const n = state.intervals ? state.intervals.labelled : 0;
  setText('ece-interval', iv.ece ? fmt(iv.ece) + ` (${BOOTSTRAP} bootstrap resamples of ${n} labels)` : '95% interval: —');
  setText('accuracy-interval', fmt(iv.accuracy));
}

function showMonitor(m) {
  const live = m.live || { labelled: 0, bins: [], served: 0 };
  const ece = $('ece');
  ece.textContent = pct(live.ece);
  ece.dataset.value = live.ece == null ? '' : String(live.ece);
  setText('mce', pct(live.mce));
  setText('accuracy', pct(live.accuracy));
  // The label-free accuracy estimate (`estimated.accuracy`: mean max calibrated probability over
  // the served window), else the mean calibrated confidence of the live window.
  const est = m.estimated;
  if (est && est.accuracy != null) {
    setText('estimate-name', 'Label-free estimate');
    setText('estimate', pct(est.accuracy));
    setText('estimate-sub', `estimated accuracy from ${est.served ?? live.served} served predictions, no labels`);
  } else {
    setText('estimate-name', 'Label-free estimate');
    setText('estimate', pct(live.mean_confidence));
    setText('estimate-sub', `mean calibrated confidence of ${live.served} served predictions`);
  }
  setText('window', `${live.labelled} labelled of ${m.window} kept · ${m.bins} equal-width bins`);
  showIntervals(); // the last one computed, which says which window it was computed on
  drawReliability($('reliability'), live.bins);
  showDrift(live.drift);
}

function showDrift(d) {
  const v = $('drift-verdict');
  v.className = 'verdict';
  if (!d) {
    v.textContent = 'no test';
    kv('drift', [['why', 'no served predictions yet, or no validation reference in the calibration file']]);
    return;
  }
  const drifted = d.p_value < DRIFT_ALPHA;
  v.textContent = drifted ? 'drifted' : 'no drift detected';
  v.classList.add(drifted ? 'bad' : 'good');
  kv('drift', [
    ['KS statistic', num(d.ks_statistic)],
    ['p-value', d.p_value < 1e-4 ? d.p_value.toExponential(1) : num(d.p_value)],
    ['served predictions', String(d.n_live)],
    ['threshold', `p < ${DRIFT_ALPHA}`],
  ]);
}

function showMetrics(samples) {
  const model = state.model;
  const ofModel = (l) => l.model === model;
  const predictRoute = (l) =>
    (l.route === '/v1/models/{model}/predict' || l.route === '/v2/models/{model}/infer') && l.status === '200';
  const snap = {
    t: Date.now(),
    predictions: total(samples, 'caliper_predictions_total', ofModel),
    ood: total(samples, 'caliper_ood_flagged_total', ofModel),
    abstained: total(samples, 'caliper_abstained_total', ofModel),
    request: buckets(samples, 'caliper_request_duration_seconds', predictRoute),
    inference: buckets(samples, 'caliper_inference_duration_seconds', ofModel),
    queue: buckets(samples, 'caliper_queue_duration_seconds', ofModel),
  };
  const h = state.history;
  // A counter that went down means the server restarted: start the history again.
  if (h.length && snap.predictions < h[h.length - 1].predictions) h.length = 0;
  h.push(snap);
  while (h.length > 2 && snap.t - h[0].t > HISTORY_MS) h.shift();

  const series = { rate: [], ood: [], abstain: [] };
  for (let i = 1; i < h.length; i++) {
    const [a, b] = [h[i - 1], h[i]];
    const n = b.predictions - a.predictions;
    series.rate.push([b.t, n / ((b.t - a.t) / 1000)]);
    if (n > 0) {
      series.ood.push([b.t, (b.ood - a.ood) / n]);
      series.abstain.push([b.t, (b.abstained - a.abstained) / n]);
    }
  }
  const last = series.rate.length ? series.rate[series.rate.length - 1][1] : null;
  setText('rate', last == null ? '—' : `${last.toFixed(1)}/s`);
  $('rate').dataset.points = String(series.rate.length);
  drawSeries($('rate-chart'), [{ points: series.rate, cls: 'line rate' }], snap.t, 1, false);

  const share = (x) => (snap.predictions ? pct(x / snap.predictions, 1) : '—');
  setText('ood-rate', share(snap.ood));
  setText('abstain-rate', share(snap.abstained));
  drawSeries(
    $('rates-chart'),
    [
      { points: series.ood, cls: 'line ood' },
      { points: series.abstain, cls: 'line abstain' },
    ],
    snap.t,
    0.1,
    true,
  );

  // Latency over the last minute of history, or since start when nothing ran in that minute.
  const base = h.find((s) => snap.t - s.t <= LATENCY_WINDOW_MS) || snap;
  const windowed = (k) => {
    const d = diff(base[k], snap[k]);
    const n = d.length ? d[d.length - 1][1] : 0;
    return n > 0 ? [d, 'last minute'] : [snap[k], 'since start'];
  };
  const [req, span] = windowed('request');
  const [inf] = windowed('inference');
  const [queue] = windowed('queue');
  kv('latency', [
    ['request p50', ms(quantile(0.5, req))],
    ['request p95 / p99', `${ms(quantile(0.95, req))} / ${ms(quantile(0.99, req))}`],
    ['inference p95 (one batch)', ms(quantile(0.95, inf))],
    ['queue wait p95', ms(quantile(0.95, queue))],
    ['predictions since start', String(snap.predictions)],
  ]);
  setText('latency-note', `Request latency of the predict and infer routes (all models), ${span}; inference and queue wait of this model.`);
}

// ---- Charts -----------------------------------------------------------------------------------

/** The reliability diagram of the window's bins ({lower, upper, count, confidence, accuracy}). */
function drawReliability(svg, bins) {
  const [x0, y0, w, h] = [36, 12, 312, 224]; // plot area
  const hx = (v) => x0 + v * w;
  const hy = (v) => y0 + (1 - v) * h;
  const g = el('g');
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    g.append(el('line', { x1: x0, x2: x0 + w, y1: hy(t), y2: hy(t), class: 'grid' }));
    g.append(el('text', { x: x0 - 6, y: hy(t) + 4, class: 'tick', 'text-anchor': 'end' }, t.toFixed(2)));
    g.append(el('text', { x: hx(t), y: y0 + h + 14, class: 'tick', 'text-anchor': 'middle' }, t.toFixed(2)));
  }
  const maxCount = Math.max(1, ...bins.map((b) => b.count));
  for (const b of bins) {
    if (!b.count) continue;
    const [bx, bw] = [hx(b.lower) + 1, (b.upper - b.lower) * w - 2];
    const tip = `confidence ${b.lower.toFixed(2)}–${b.upper.toFixed(2)}: ${b.count} labelled, ` +
      `mean confidence ${pct(b.confidence)}, accuracy ${pct(b.accuracy)}`;
    // Blue up to where accuracy and confidence agree, red for the gap between them, and a tick
    // at the accuracy itself (the top of the red when overconfident, its bottom otherwise).
    const [top, bottom] = [Math.max(b.accuracy, b.confidence), Math.min(b.accuracy, b.confidence)];
    g.append(el('rect', { x: bx, y: hy(bottom), width: bw, height: h * bottom, class: 'bar' }, el('title', {}, tip)));
    g.append(el('rect', { x: bx, y: hy(top), width: bw, height: h * (top - bottom), class: 'gap' }, el('title', {}, tip)));
    g.append(el('line', { x1: bx, x2: bx + bw, y1: hy(b.accuracy), y2: hy(b.accuracy), class: 'acc' }));
    // Counts strip under the axis: height ~ share of the window (sqrt, so sparse bins show).
    const ch = 44 * Math.sqrt(b.count / maxCount);
    g.append(el('rect', { x: bx, y: 316 - ch, width: bw, height: ch, class: 'count' }, el('title', {}, tip)));
  }
  g.append(el('line', { x1: hx(0), y1: hy(0), x2: hx(1), y2: hy(1), class: 'diagonal' }));
  g.append(el('text', { x: x0 + w / 2, y: 268, class: 'label', 'text-anchor': 'middle' }, 'confidence'));
  g.append(el('text', { x: 10, y: y0 + h / 2, class: 'label', 'text-anchor': 'middle', transform: `rotate(-90 10 ${y0 + h / 2})` }, 'accuracy'));
  if (!bins.some((b) => b.count)) {
    g.append(el('text', { x: x0 + w / 2, y: y0 + h / 2, class: 'empty', 'text-anchor': 'middle' }, 'no labelled predictions yet: POST /v1/feedback'));
  }
  svg.replaceChildren(g);
}

/** Lines over the history (30 s to HISTORY_MS of it); y from 0 to the data's maximum, at least
 * `floor`; `fraction` labels the axis as a percentage. */
function drawSeries(svg, series, now, floor, fraction) {
  const [w, h, pad] = [320, 80, 4];
  const all = series.flatMap((s) => s.points);
  const top = Math.max(floor, ...all.map((p) => p[1]));
  const oldest = Math.min(now, ...all.map((p) => p[0]));
  const span = Math.min(HISTORY_MS, Math.max(30000, now - oldest));
  const g = el('g');
  g.append(el('line', { x1: 0, x2: w, y1: h - pad, y2: h - pad, class: 'grid' }));
  for (const s of series) {
    const pts = s.points
      .filter(([t]) => now - t <= span)
      .map(([t, v]) => `${(w * (1 - (now - t) / span)).toFixed(1)},${(h - pad - (h - 2 * pad) * (v / top)).toFixed(1)}`);
    if (pts.length === 1) pts.push(pts[0].replace(/^[\d.]+/, (x) => String(Number(x) - 2)));
    if (pts.length) g.append(el('polyline', { points: pts.join(' '), class: s.cls }));
  }
  g.append(el('text', { x: 2, y: 10, class: 'tick' }, fraction ? pct(top, 0) : top.toFixed(1) + '/s'));
  g.append(el('text', { x: w - 2, y: h - 8, class: 'tick', 'text-anchor': 'end' }, 'now'));
  const ago = span >= 60000 ? `−${(span / 60000).toFixed(span % 60000 ? 1 : 0)} min` : `−${Math.round(span / 1000)} s`;
  g.append(el('text', { x: 2, y: h - 8, class: 'tick' }, ago));
  svg.replaceChildren(g);
}

// ---- Try an image -----------------------------------------------------------------------------

async function tryImage() {
  const file = $('upload').files[0];
  if (!file || !state.model) return;
  const q = new URLSearchParams({ top_k: '5' });
  const alpha = $('alpha').value.trim();
  if (alpha) q.set('alpha', alpha);
  setText('try-status', 'predicting…');
  try {
    const p = await apiJson(`/v1/models/${encodeURIComponent(state.model)}/predict?${q}`, {
      method: 'POST',
      headers: { 'Content-Type': file.type || 'application/octet-stream' },
      body: file,
    });
    showPrediction(p, file);
    setText('try-status', `${file.name} · ${p.model} v${p.model_version}`);
  } catch (e) {
    if (e instanceof Unauthorized) $('key-form').hidden = false;
    $('result').hidden = true;
    setText('try-status', e.message);
  }
}

function showPrediction(p, file) {
  const img = $('preview');
  if (img.src) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(file);
  setText('result-label', p.label);
  setText('result-confidence', `${prob(p.confidence)} ${p.calibrated ? 'calibrated (' + p.calibration_method + ')' : 'uncalibrated'}`);
  $('topk').replaceChildren(
    ...p.top_k.map((k) => {
      const bar = el('span', { class: 'fill' });
      bar.style.width = (k.probability * 100).toFixed(1) + '%';
      return el('div', { class: 'row' }, el('span', { class: 'k' }, k.label), el('span', { class: 'track' }, bar), el('span', { class: 'v' }, prob(k.probability)));
    }),
  );
  const o = p.ood;
  const verdict = el('span', { class: 'badge ' + (o.is_ood ? 'bad' : 'good'), id: 'result-ood' }, o.is_ood ? 'out of distribution' : 'in distribution');
  const set = p.prediction_set
    ? el('span', { id: 'result-set' }, ...p.prediction_set.map((l) => el('span', { class: 'chip' }, l)), p.prediction_set.length ? '' : '∅ (empty)')
    : 'none (the calibration file has no conformal predictor)';
  kv('result-trust', [
    ['OOD', verdict],
    [`${o.method} score`, `${num(o.score)}${o.threshold == null ? '' : ' vs threshold ' + num(o.threshold)}`],
    [`conformal set${p.conformal ? ' (' + p.conformal + ')' : ''}`, set],
    ['abstained', p.abstained ? `yes (${p.abstain_reason})` : 'no'],
    ['prediction_id', el('code', { class: 'id', title: p.prediction_id }, p.prediction_id.slice(0, 24) + '…')],
  ]);
  $('result').hidden = false;
}

// ---- Start ------------------------------------------------------------------------------------

$('model').addEventListener('change', (e) => {
  state.model = e.target.value;
  state.history = [];
  state.intervals = null;
  state.bootstrapAt = 0;
  params.set('model', state.model);
  history.replaceState(null, '', '?' + params);
  showModelMeta();
  poll();
});
$('key-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.key = $('key').value;
  sessionStorage.setItem('caliper-api-key', state.key);
  $('key-form').hidden = true;
  state.models = null;
  poll();
});
$('try-form').addEventListener('submit', (e) => e.preventDefault());
$('upload').addEventListener('change', tryImage);
$('alpha').addEventListener('change', tryImage);
poll();
