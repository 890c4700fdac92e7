/* winclip report: review verdicts (report_verdicts.py embeds this file; the page's
   Content-Security-Policy allows it by its hash). Each card gets "Defect" and "False
   alarm" toggles (keys d and f on a focused card) and a one-line note; the table gets a
   verdict column and filter; verdicts are kept in localStorage under the report's run
   id, exported as verdicts.csv and imported back. Every text that came from a file or a
   person (paths, notes) is set with textContent or .value, never parsed as HTML.
   Runs before the report's main script, so that script's sort and filters see the new
   column and select. */
(function () {
  'use strict';
  var source = document.getElementById('verdict-data');
  if (!source) return;
  var info;
  try { info = JSON.parse(source.textContent); } catch (e) { return; }
  var ROWS = info.rows;  /* [path, score, label, p_value, status] by row number - 1 */
  var KEY = 'winclip-verdicts:' + info.run;
  var COLUMNS = ['path', 'verdict', 'score', 'label', 'p_value', 'note', 'reviewed_at'];
  var NAMES = { defect: 'defect', false_alarm: 'false alarm' };
  var byPath = new Map();  /* path -> [row numbers] */
  ROWS.forEach(function (r, i) {
    if (!byPath.has(r[0])) byPath.set(r[0], []);
    byPath.get(r[0]).push(i + 1);
  });
  var store = new Map();  /* path -> {verdict, note, at} */
  var cardsOf = new Map(), cellsOf = new Map();  /* path -> elements showing it */
  var bar, countText, statusText, filter;

  function say(text) { if (statusText) statusText.textContent = text; }

  function load() {
    try {
      var saved = JSON.parse(localStorage.getItem(KEY) || '[]');
      if (Array.isArray(saved)) saved.forEach(function (e) {
        if (Array.isArray(e) && byPath.has(e[0]) && e[1] && typeof e[1] === 'object') {
          store.set(e[0], { verdict: NAMES[e[1].verdict] ? e[1].verdict : '',
            note: String(e[1].note || ''), at: String(e[1].at || '') });
        }
      });
    } catch (e) { say('Verdicts cannot be read back in this browser: export them.'); }
  }

  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(Array.from(store.entries()))); }
    catch (e) { say('Verdicts cannot be kept in this browser: export them before closing.'); }
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* ----- showing a verdict ----- */
  function show(path) {
    var entry = store.get(path) || { verdict: '', note: '' };
    (cardsOf.get(path) || []).forEach(function (card) {
      card.classList.remove('v-defect', 'v-false_alarm');
      if (entry.verdict) card.classList.add('v-' + entry.verdict);
      card.querySelectorAll('.v-btn').forEach(function (b) {
        b.setAttribute('aria-pressed', b.dataset.verdict === entry.verdict ? 'true' : 'false');
      });
      var note = card.querySelector('.v-note');
      if (note && note !== document.activeElement) note.value = entry.note || '';
      card.querySelector('.v-shown').textContent =
        entry.verdict ? 'Verdict: ' + NAMES[entry.verdict] : '';
    });
    (cellsOf.get(path) || []).forEach(function (cell) {
      cell.textContent = entry.verdict ? NAMES[entry.verdict] : '';
    });
  }

  function counted() {
    var d = 0, f = 0;
    store.forEach(function (e) { if (e.verdict === 'defect') d++; else if (e.verdict) f++; });
    if (countText) countText.textContent = (d + f) + ' reviewed: ' + d + ' defect' +
      (d === 1 ? '' : 's') + ', ' + f + ' false alarm' + (f === 1 ? '' : 's');
  }

  function refilter() {
    if (filter && filter.value !== '*') filter.dispatchEvent(new Event('change'));
  }

  function set(path, verdict, note) {
    var entry = store.get(path) || { verdict: '', note: '', at: '' };
    if (verdict !== null) entry.verdict = verdict;
    if (note !== null) entry.note = note;
    entry.at = new Date().toISOString();
    if (!entry.verdict && !entry.note) store.delete(path); else store.set(path, entry);
    save(); show(path); counted(); refilter();
  }

  function toggle(card, verdict) {
    var path = ROWS[card.dataset.row - 1][0], now = store.get(path);
    set(path, now && now.verdict === verdict ? '' : verdict, null);
  }

  /* ----- the cards ----- */
  function decorate(card) {
    var number = Number(card.dataset.row);
    if (!(number >= 1 && number <= ROWS.length) || card.dataset.status === 'error') return;
    var path = ROWS[number - 1][0], rank = card.querySelector('.path');
    var box = el('div', { 'class': 'verdict', role: 'group', 'aria-label': 'Verdict' });
    box.appendChild(el('button', { type: 'button', 'class': 'v-btn', 'data-verdict': 'defect',
      'aria-pressed': 'false', title: 'Defect (d)' }, 'Defect'));
    box.appendChild(el('button', { type: 'button', 'class': 'v-btn',
      'data-verdict': 'false_alarm', 'aria-pressed': 'false', title: 'False alarm (f)' },
      'False alarm'));
    var note = el('input', { type: 'text', 'class': 'v-note', maxlength: '500',
      autocomplete: 'off', placeholder: 'note (optional)',
      'aria-label': 'Note on ' + (rank ? rank.textContent : path) });
    note.addEventListener('input', function () {  /* kept at each keystroke: a reload loses nothing */
      set(path, null, note.value.replace(/[\r\n]+/g, ' '));
    });
    box.appendChild(note);
    box.appendChild(el('p', { 'class': 'v-shown', 'aria-live': 'polite' }));
    card.appendChild(box);
    if (!cardsOf.has(path)) cardsOf.set(path, []);
    cardsOf.get(path).push(card);
  }

  document.addEventListener('click', function (e) {
    var button = e.target.closest && e.target.closest('button.v-btn');
    if (button) toggle(button.closest('.card'), button.dataset.verdict);
  });
  document.addEventListener('keydown', function (e) {
    var card = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || !card.classList ||
        !card.classList.contains('card') || !card.querySelector('.v-btn')) return;
    if (e.key === 'd') { e.preventDefault(); toggle(card, 'defect'); }
    else if (e.key === 'f') { e.preventDefault(); toggle(card, 'false_alarm'); }
  });

  /* ----- the table: a verdict column and its filter ----- */
  function table() {
    var t = document.getElementById('rows');
    if (!t || !t.tHead) return;
    var th = el('th', { scope: 'col', 'data-col': 'verdict', 'data-type': 'text',
      'aria-sort': 'none' });
    th.appendChild(el('button', { type: 'button' }, 'verdict'));
    t.tHead.rows[0].appendChild(th);
    Array.prototype.forEach.call(t.tBodies[0].rows, function (tr, i) {
      var cell = tr.insertCell(-1), path = ROWS[i] && ROWS[i][0];
      if (path === undefined) return;
      if (!cellsOf.has(path)) cellsOf.set(path, []);
      cellsOf.get(path).push(cell);
    });
    var controls = document.querySelector('.controls[role=search]');
    if (!controls) return;
    filter = el('select', { id: 'filter-verdict', 'data-col': 'verdict' });
    [['*', 'all'], ['defect', 'defect'], ['false alarm', 'false alarm'], ['', '(none)']]
      .forEach(function (o) { filter.appendChild(el('option', { value: o[0] }, o[1])); });
    var label = el('label', { 'for': 'filter-verdict' }, 'verdict');
    var shown = document.getElementById('shown-count');
    controls.insertBefore(label, shown);
    controls.insertBefore(filter, shown);
  }

  /* ----- export and import ----- */
  function quote(value, always) {
    var text = String(value === undefined || value === null ? '' : value);
    return always || /[",\r\n]|^\s|\s$/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function csvText() {
    var lines = [COLUMNS.join(',')], done = new Set();
    ROWS.forEach(function (r) {
      var e = store.get(r[0]);
      if (!e || !e.verdict || done.has(r[0])) return;
      done.add(r[0]);
      lines.push([quote(r[0]), e.verdict, quote(r[1]), quote(r[2]), quote(r[3]),
        quote(e.note, true), e.at].join(','));
    });
    return lines.join('\r\n') + '\r\n';
  }

  function exportCsv() {
    var text = csvText();
    var blob = new Blob([text], { type: 'text/csv;charset=utf-8' });
    var link = el('a', { download: 'verdicts.csv', hidden: '' });
    link.href = URL.createObjectURL(blob);
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 0);
    say('verdicts.csv exported (' + (text.split('\r\n').length - 2) + ' verdicts).');
  }

  function parseCsv(text) {  /* RFC 4180: quoted fields, doubled quotes, CRLF or LF */
    var records = [], record = [], field = '', quoted = false, i = 0;
    if (text.charCodeAt(0) === 0xfeff) i = 1;
    for (; i < text.length; i++) {
      var c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (c === '"') quoted = false;
        else field += c;
      } else if (c === '"') quoted = true;
      else if (c === ',') { record.push(field); field = ''; }
      else if (c === '\n' || c === '\r') {
        if (c === '\r' && text[i + 1] === '\n') i++;
        record.push(field); records.push(record); record = []; field = '';
      } else field += c;
    }
    if (field !== '' || record.length) { record.push(field); records.push(record); }
    return records;
  }

  function importCsv(text) {
    var records = parseCsv(text), header = records.shift() || [];
    var at = {};
    header.forEach(function (name, i) { at[name.trim()] = i; });
    if (at.path === undefined || at.verdict === undefined) {
      say('Not a verdict file: it needs the columns ' + COLUMNS.join(',') + '.');
      return;
    }
    var taken = 0, elsewhere = 0, bad = 0;
    records.forEach(function (r) {
      if (r.length === 1 && r[0] === '') return;
      var path = r[at.path], verdict = (r[at.verdict] || '').trim();
      if (!NAMES[verdict] || path === undefined) { bad++; return; }
      if (!byPath.has(path)) { elsewhere++; return; }
      var note = at.note === undefined ? '' : (r[at.note] || '').replace(/[\r\n]+/g, ' ');
      var when = at.reviewed_at === undefined ? '' : r[at.reviewed_at] || '';
      store.set(path, { verdict: verdict, note: note, at: when || new Date().toISOString() });
      taken++;
    });
    save();
    byPath.forEach(function (_rows, path) { show(path); });
    counted(); refilter();
    say(taken + ' verdicts imported' + (elsewhere ? '; ' + elsewhere +
      ' for images not in this report, left out' : '') + (bad ? '; ' + bad +
      ' lines without a verdict of defect or false_alarm, left out' : '') + '.');
  }

  function toolbar() {
    var gallery = document.getElementById('gallery') ||
      document.getElementById('table-section');
    if (!gallery) return;
    bar = el('div', { 'class': 'verdict-bar', role: 'group', 'aria-label': 'Review' });
    var exporter = el('button', { type: 'button', id: 'export-verdicts' }, 'Export verdicts');
    var importer = el('button', { type: 'button', id: 'import-verdicts' }, 'Import verdicts');
    var chooser = el('input', { type: 'file', id: 'import-file', accept: '.csv,text/csv',
      hidden: '', 'aria-label': 'Verdict file to import' });
    exporter.addEventListener('click', exportCsv);
    importer.addEventListener('click', function () { chooser.click(); });
    chooser.addEventListener('change', function () {
      var file = chooser.files && chooser.files[0];
      if (!file) return;
      var reader = new FileReader();
      reader.onload = function () { importCsv(String(reader.result)); chooser.value = ''; };
      reader.onerror = function () { say('The file could not be read.'); };
      reader.readAsText(file);
    });
    countText = el('span', { id: 'verdict-count' });
    statusText = el('span', { id: 'verdict-status', role: 'status' });
    [exporter, importer, chooser, countText, statusText].forEach(function (n) {
      bar.appendChild(n);
    });
    gallery.parentNode.insertBefore(bar, gallery);
    var hint = document.querySelector('#gallery-section .hint');
    if (hint) hint.appendChild(document.createTextNode(
      ' Mark each card "Defect" or "False alarm" (the d and f keys); "Export verdicts" ' +
      'saves them as verdicts.csv for winclip review.'));
  }

  load();
  toolbar();
  document.querySelectorAll('.card').forEach(decorate);
  table();
  byPath.forEach(function (_rows, path) { show(path); });
  counted();
})();
