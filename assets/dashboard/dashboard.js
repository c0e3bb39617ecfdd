// The dashboard: polls /api/v1/stats, /api/v1/routes and /api/v1/fleet, keeps the last
// five minutes of what it read, and shows each route's primary and mirrors
// side by side — numbers for the chosen window and charts of their history.
(function () {
  'use strict';

  var D = window.ShadowDom;
  var el = D.el;
  var fmt = D.fmt;
  var boot = window.shadowgateBoot || { headers: {}, tokenKey: 'shadowgate.adminToken' };

  var params = new URLSearchParams(window.location.search);
  var INTERVAL_MS = Math.min(60000, Math.max(500, parseInt(params.get('interval'), 10) || 2000));
  var HISTORY_MS = 5 * 60 * 1000;
  var PROMOTION_REPROBE_MS = 60000;
  var WINDOWS = ['1m', '5m', '15m'];
  var PRIMARY_COLOR = '#2563eb';
  var MIRROR_COLORS = ['#ea580c', '#16a34a', '#9333ea', '#db2777', '#0891b2', '#ca8a04', '#4b5563'];

  var state = {
    window: WINDOWS.indexOf(sessionStorage.getItem('shadowgate.window')) >= 0 ? sessionStorage.getItem('shadowgate.window') : '1m',
    history: [], // [{t, values: {targetKey: {window: derived}}}]
    stats: null,
    routes: null,
    layoutKey: null,
    cards: {}, // route -> {charts: [...], promotion: element}
    promotion: {}, // route -> {supported, data, checked}
    polls: 0,
    failures: 0,
    fleet: null, // /api/v1/fleet, when the store is shared
  };

  // --- the admin API -------------------------------------------------------

  function getJson(path) {
    return fetch(path, { headers: boot.headers, cache: 'no-store' }).then(function (r) {
      if (r.status === 401) {
        // The token changed or was never given: back to the token page.
        sessionStorage.removeItem(boot.tokenKey);
        window.location.replace('./');
      }
      if (!r.ok) {
        var e = new Error(path + ' answered ' + r.status);
        e.status = r.status;
        throw e;
      }
      return r.json();
    });
  }

  // --- what the charts plot -------------------------------------------------

  function sum(map) {
    var n = 0;
    Object.keys(map || {}).forEach(function (k) { n += map[k]; });
    return n;
  }

  function derive(w) {
    var secs = w.seconds > 0 ? w.seconds : null;
    return {
      rate: w.rate,
      error_percent: w.error_percent,
      p50_ms: w.p50_ms,
      p99_ms: w.p99_ms,
      dropped_rate: secs ? sum(w.dropped) / secs : null,
      failed_rate: secs ? sum(w.failed) / secs : null,
      diff_percent: w.diff_percent === undefined ? null : w.diff_percent,
    };
  }

  function targetKey(route, t) {
    return route + '\u0000' + t.role + '\u0000' + t.backend;
  }

  var CHARTS = [
    { id: 'rate', title: 'Requests/s', format: fmt.rate, lines: [{ field: 'rate' }] },
    { id: 'errors', title: 'Error %', format: fmt.pct, unit: '%', lines: [{ field: 'error_percent' }] },
    {
      id: 'latency', title: 'Latency p99, p50 dashed', format: fmt.ms, unit: 'ms',
      lines: [{ field: 'p99_ms', suffix: ' p99' }, { field: 'p50_ms', suffix: ' p50', dash: [5, 4], width: 1.25 }],
    },
    { id: 'dropped', title: 'Dropped mirror copies/s', format: fmt.rate, mirrorsOnly: true, lines: [{ field: 'dropped_rate' }] },
    { id: 'failed', title: 'Failed mirror copies/s', format: fmt.rate, mirrorsOnly: true, lines: [{ field: 'failed_rate' }] },
    { id: 'diff', title: 'Diff rate %', format: fmt.pct, unit: '%', mirrorsOnly: true, minMax: 1, lines: [{ field: 'diff_percent' }] },
  ];

  var ROWS = [
    { field: 'rate', label: 'Requests/s', format: fmt.rate },
    { field: 'requests', label: 'Requests', format: fmt.count },
    { field: 'error_percent', label: 'Errors', format: fmt.pct, sub: function (w) { return w.errors ? fmt.count(w.errors) + ' errors' : ''; } },
    { field: 'p50_ms', label: 'Latency p50', format: fmt.ms },
    { field: 'p99_ms', label: 'Latency p99', format: fmt.ms },
    { field: 'dropped', label: 'Dropped', mirrorsOnly: true, breakdown: 'dropped' },
    { field: 'failed', label: 'Failed', mirrorsOnly: true, breakdown: 'failed' },
    { field: 'in_flight', label: 'In flight', mirrorsOnly: true, inFlight: true },
    {
      field: 'diff_percent', label: 'Diff rate', mirrorsOnly: true, format: fmt.pct,
      sub: function (w) { return w.compared ? fmt.count(w.different) + ' of ' + fmt.count(w.compared) : 'not compared'; },
    },
  ];

  // --- layout ---------------------------------------------------------------

  function colorOf(index) {
    return index === 0 ? PRIMARY_COLOR : MIRROR_COLORS[(index - 1) % MIRROR_COLORS.length];
  }

  function mirrorInfo(route, backend) {
    var r = (state.routes || []).filter(function (x) { return x.name === route; })[0];
    if (!r) return null;
    return (r.mirrors || []).filter(function (m) { return m.backend === backend; })[0] || null;
  }

  function buildLayout() {
    var root = document.getElementById('routes');
    D.clear(root);
    state.cards = {};
    if (!state.stats.routes.length) {
      root.appendChild(el('p', { className: 'placeholder' }, 'No routes are configured.'));
      return;
    }
    state.stats.routes.forEach(function (route) {
      root.appendChild(buildCard(route));
    });
  }

  function buildCard(route) {
    var name = route.route;
    var targets = route.targets;
    var card = el('article', { className: 'route', dataset: { route: name } });
    var promotion = el('div', { className: 'promotion', hidden: true, dataset: { route: name, panel: 'promotion' } });
    var chain = el('span', { className: 'chain' });
    card.appendChild(el('header', { className: 'route-head' },
      el('h2', null, name), chain, promotion));

    var table = el('table', { className: 'targets' });
    var colgroup = el('colgroup', null, el('col', { className: 'label-col' }));
    targets.forEach(function () { colgroup.appendChild(el('col')); });
    table.appendChild(colgroup);
    var headRow = el('tr', null, el('th', { className: 'corner' }, el('span', { className: 'window-note', dataset: { field: 'window-note' } }, '')));
    targets.forEach(function (t, i) {
      headRow.appendChild(el('th', { className: 'target-head', dataset: { route: name, backend: t.backend, role: t.role } },
        el('span', { className: 'swatch', attrs: { 'aria-hidden': 'true' } }),
        el('span', { className: 'backend' }, t.backend),
        el('span', { className: 'role ' + t.role, dataset: { route: name, backend: t.backend, field: 'role-note' } }, t.role)));
      headRow.lastChild.firstChild.style.background = colorOf(i);
    });
    table.appendChild(el('thead', null, headRow));
    var body = el('tbody');
    // A route without mirrors shows neither mirror rows nor mirror charts.
    var hasMirror = targets.some(function (t) { return t.role === 'mirror'; });
    ROWS.filter(function (row) { return hasMirror || !row.mirrorsOnly; }).forEach(function (row) {
      var tr = el('tr', { dataset: { row: row.field } }, el('th', { scope: 'row' }, row.label));
      targets.forEach(function (t) {
        var ds = { route: name, backend: t.backend, role: t.role, field: row.field };
        if (row.mirrorsOnly && t.role !== 'mirror') {
          tr.appendChild(el('td', { className: 'na' }, '·'));
          return;
        }
        tr.appendChild(el('td', null,
          el('span', { className: 'num', dataset: ds }, '–'),
          row.sub || row.breakdown
            ? el('span', { className: 'sub', dataset: { route: name, backend: t.backend, role: t.role, sub: row.field } }, '')
            : null));
      });
      body.appendChild(tr);
    });
    table.appendChild(body);

    var charts = el('div', { className: 'charts' });
    var chartObjs = CHARTS.filter(function (def) { return hasMirror || !def.mirrorsOnly; }).map(function (def) {
      var canvas = el('canvas', { attrs: { role: 'img', 'aria-label': def.title } });
      var title = el('div', { className: 'chart-title' }, def.title, el('span', { className: 'chart-window' }, ''));
      charts.appendChild(el('figure', { className: 'chart', dataset: { route: name, chart: def.id } }, title, canvas));
      return {
        def: def,
        title: title,
        chart: new window.ShadowChart.LineChart(canvas, {
          format: def.format,
          unit: def.unit,
          spanMs: HISTORY_MS,
          gapMs: Math.max(15000, INTERVAL_MS * 4),
          minMax: def.minMax || 1,
          emptyText: 'collecting…',
        }),
      };
    });
    card.appendChild(el('div', { className: 'route-body' }, el('div', { className: 'table-wrap' }, table), charts));
    state.cards[name] = { charts: chartObjs, promotion: promotion, chain: chain, card: card };
    return card;
  }

  function layoutKeyOf(stats) {
    return JSON.stringify(stats.routes.map(function (r) {
      return [r.route, r.targets.map(function (t) { return [t.role, t.backend]; })];
    }));
  }

  // --- updating -------------------------------------------------------------

  function setNum(node, value, text) {
    var v = value === null || value === undefined ? '' : String(value);
    if (node.dataset.value !== v) node.dataset.value = v;
    if (node.dataset.window !== state.window) node.dataset.window = state.window;
    if (node.textContent !== text) node.textContent = text;
  }

  function breakdown(map) {
    var keys = Object.keys(map || {}).sort(function (a, b) { return map[b] - map[a]; });
    return keys.map(function (k) { return k.replace(/_/g, ' ') + ' ' + fmt.count(map[k]); }).join(' · ');
  }

  function renderNumbers() {
    var win = state.window;
    state.stats.routes.forEach(function (route) {
      var card = state.cards[route.route];
      if (!card) return;
      var rinfo = (state.routes || []).filter(function (x) { return x.name === route.route; })[0];
      var chainText = '';
      if (rinfo) {
        chainText = 'primary ' + rinfo.backend +
          (rinfo.split && rinfo.split.length ? ' (split ' + rinfo.split.map(function (s) { return s.backend + ' ' + s.weight; }).join(', ') + ')' : '') +
          (rinfo.mirrors.length ? ' → mirrors ' + rinfo.mirrors.map(function (m) { return m.backend + ' ' + trimNum(m.percent) + '%'; }).join(', ') : ' · no mirrors');
      }
      if (card.chain.textContent !== chainText) card.chain.textContent = chainText;
      var note = card.card.querySelector('[data-field="window-note"]');
      if (note) note.textContent = 'last ' + win;
      route.targets.forEach(function (t) {
        var w = t.windows[win];
        if (!w) return;
        var sel = '[data-route="' + cssEscape(route.route) + '"][data-backend="' + cssEscape(t.backend) + '"][data-role="' + t.role + '"]';
        ROWS.forEach(function (row) {
          var num = card.card.querySelector('.num' + sel + '[data-field="' + row.field + '"]');
          var sub = card.card.querySelector('.sub' + sel + '[data-sub="' + row.field + '"]');
          if (!num) return;
          if (row.inFlight) {
            var mi = mirrorInfo(route.route, t.backend);
            setNum(num, mi ? mi.in_flight : null, mi ? fmt.count(mi.in_flight) + ' / ' + fmt.count(mi.max_in_flight) : '–');
            return;
          }
          if (row.breakdown) {
            var total = sum(w[row.breakdown]);
            setNum(num, total, fmt.count(total));
            var text = breakdown(w[row.breakdown]);
            if (sub && sub.textContent !== text) { sub.textContent = text; sub.title = text; }
            return;
          }
          var value = w[row.field];
          setNum(num, value, row.format(value));
          var subText = row.sub ? row.sub(w) : '';
          if (sub && sub.textContent !== subText) sub.textContent = subText;
        });
        if (t.role === 'mirror') {
          var m = mirrorInfo(route.route, t.backend);
          var roleNote = card.card.querySelector('.role[data-backend="' + cssEscape(t.backend) + '"]');
          var txt = m ? 'mirror · ' + trimNum(m.percent) + '%' : 'mirror';
          if (roleNote && roleNote.textContent !== txt) roleNote.textContent = txt;
        }
      });
    });
  }

  function renderCharts() {
    var now = Date.now();
    var win = state.window;
    state.stats.routes.forEach(function (route) {
      var card = state.cards[route.route];
      if (!card) return;
      card.charts.forEach(function (c) {
        c.title.lastChild.textContent = ' · ' + win;
        var series = [];
        route.targets.forEach(function (t, i) {
          if (c.def.mirrorsOnly && t.role !== 'mirror') return;
          var key = targetKey(route.route, t);
          c.def.lines.forEach(function (line) {
            series.push({
              label: t.backend + (line.suffix || ''),
              color: colorOf(i),
              dash: line.dash,
              // The primary is drawn first and wider, so a mirror on top of it leaves it visible.
              width: (line.width || 1.75) + (t.role === 'primary' ? 1.5 : 0),
              points: state.history.map(function (h) {
                var v = h.values[key];
                var d = v && v[win];
                return [h.t, d ? d[line.field] : null];
              }),
            });
          });
        });
        c.chart.update(series, now);
      });
    });
  }

  function renderPromotion() {
    Object.keys(state.cards).forEach(function (name) {
      var panel = state.cards[name].promotion;
      var p = state.promotion[name];
      if (!p || !p.supported) {
        panel.hidden = true;
        return;
      }
      var data = p.data || {};
      D.clear(panel);
      panel.appendChild(el('span', { className: 'label' }, 'promotion'));
      panel.appendChild(el('span', { className: 'pill', dataset: { field: 'promotion-state' } }, String(data.state || 'unknown')));
      panel.appendChild(el('span', { className: 'kv' }, 'primary ', el('b', null, String(data.primary || '-'))));
      panel.appendChild(el('span', { className: 'kv' }, 'candidate ', el('b', null, String(data.candidate || '-') + ' (' + String(data.share || 0) + '%)')));
      panel.appendChild(el('span', { className: 'kv' }, 'verdict ', el('b', { dataset: { field: 'promotion-verdict' } }, String(data.verdict || '-').replace(/_/g, ' '))));
      if (data.configured === false) {
        panel.appendChild(el('span', { className: 'kv', dataset: { field: 'promotion-defaults' } }, 'default gates (no promotion block)'));
      }
      var gates = (data.judgement && data.judgement.gates) || [];
      gates.forEach(function (g) {
        var value = g.value === null || g.value === undefined ? 'n/a' : trimNum(g.value);
        var mark = g.pass === true ? ' \u2713' : (g.pass === false ? ' \u2717' : '');
        var source = g.source === 'default' ? ' (default)' : '';
        var item = el('span', { className: 'kv', dataset: { gate: g.name, pass: String(g.pass), source: String(g.source || '') } },
          g.name.replace(/_/g, ' ') + ' ', el('b', null, value + ' / ' + trimNum(g.limit) + mark), source);
        if (g.note) item.title = String(g.note);
        panel.appendChild(item);
      });
      var off = (data.judgement && data.judgement.off) || [];
      off.forEach(function (g) {
        panel.appendChild(el('span', { className: 'kv gate-off', dataset: { gateOff: String(g.name) }, title: String(g.reason || '') },
          String(g.name).replace(/_/g, ' ') + ' ', el('b', null, 'off')));
      });
      if (data.auto_held) panel.appendChild(el('span', { className: 'kv' }, 'auto promotion paused'));
      panel.title = JSON.stringify(data, null, 2);
      panel.hidden = false;
    });
  }

  function trimNum(v) {
    return Number(v).toFixed(2).replace(/\.?0+$/, '');
  }

  function cssEscape(s) {
    return window.CSS && CSS.escape ? CSS.escape(s) : String(s).replace(/["\\]/g, '\\$&');
  }

  function setConn(ok, text) {
    var conn = document.getElementById('conn');
    conn.dataset.state = ok ? 'live' : 'down';
    conn.querySelector('.conn-text').textContent = text;
  }

  function clock(d) {
    return d.toTimeString().slice(0, 8);
  }

  // --- polling ---------------------------------------------------------------

  function record(stats, now) {
    var values = {};
    stats.routes.forEach(function (route) {
      route.targets.forEach(function (t) {
        var per = {};
        WINDOWS.forEach(function (w) { if (t.windows[w]) per[w] = derive(t.windows[w]); });
        values[targetKey(route.route, t)] = per;
      });
    });
    state.history.push({ t: now, values: values });
    while (state.history.length && state.history[0].t < now - HISTORY_MS - INTERVAL_MS) state.history.shift();
  }

  function probePromotions(routeNames) {
    var now = Date.now();
    return Promise.all(routeNames.map(function (name) {
      var p = state.promotion[name];
      if (p && p.supported === false && now - p.checked < PROMOTION_REPROBE_MS) return null;
      return getJson('api/v1/routes/' + encodeURIComponent(name) + '/promotion').then(function (data) {
        state.promotion[name] = { supported: true, data: data, checked: now };
      }, function (e) {
        if (e.status === 404) state.promotion[name] = { supported: false, checked: now };
        // anything else: keep what was shown
      });
    }));
  }

  // Only a replica on a shared store (its stats carry `fleet`) has a fleet
  // to show; a failure keeps what was shown.
  function probeFleet(stats) {
    if (!stats.fleet) {
      state.fleet = null;
      return null;
    }
    return getJson('api/v1/fleet').then(function (f) { state.fleet = f; }, function () {});
  }

  var diffs = window.ShadowDiffs.create({
    container: document.getElementById('diffs'),
    getJson: getJson,
    onSummary: function (summary) {
      var badge = document.getElementById('diffs-badge');
      var different = (summary || []).reduce(function (n, r) { return n + (r.different || 0); }, 0);
      badge.textContent = different ? fmt.count(different) : '';
      badge.hidden = !different;
    },
  });

  function currentView() {
    return window.location.hash === '#diffs' ? 'diffs' : 'traffic';
  }

  function poll() {
    var started = Date.now();
    Promise.all([getJson('api/v1/stats'), getJson('api/v1/routes')]).then(function (res) {
      var stats = res[0];
      var routes = res[1].routes || [];
      var names = stats.routes.map(function (r) { return r.route; });
      var extra = [probePromotions(names), diffs.refresh(currentView() === 'diffs'), probeFleet(stats)];
      // The first drawing waits for the optional panels, so they do not push things around later.
      return (state.polls === 0 ? Promise.all(extra) : Promise.resolve()).then(function () {
        return { stats: stats, routes: routes };
      });
    }).then(function (got) {
      try {
        show(got.stats, got.routes);
      } catch (e) {
        // A bug here, not a network problem: say so where it can be seen.
        console.error('dashboard: drawing failed:', e);
        setConn(false, 'display error');
      }
    }, function (e) {
      state.failures += 1;
      setConn(false, 'no answer · retrying');
      document.body.dataset.lastError = String(e && e.message);
    }).then(function () {
      var wait = Math.max(100, INTERVAL_MS - (Date.now() - started));
      window.setTimeout(poll, wait);
    });
  }

  // The fleet: every replica on the shared store, this one marked.
  function renderFleet() {
    var box = document.getElementById('fleet');
    var f = state.fleet;
    if (!f || !f.shared) {
      box.hidden = true;
      return;
    }
    var alive = f.replicas.filter(function (r) { return r.alive; }).length;
    var rows = f.replicas.map(function (r) {
      var me = r.id === f.replica;
      var notes = [];
      if (me) notes.push('this replica');
      if (me && f.leader) notes.push('leader');
      return el('tr', { dataset: { replica: r.id, alive: r.alive, me: me } },
        el('td', null, r.id),
        el('td', null, r.admin),
        el('td', null, r.version),
        el('td', null, r.alive ? (r.last_seen_ms_ago / 1000).toFixed(1) + ' s ago' : 'gone'),
        el('td', null, notes.join(', ')));
    });
    D.clear(box);
    box.appendChild(el('h2', null,
      'Fleet · ' + alive + ' of ' + f.replicas.length + ' replicas alive · state version ' + f.state_version + ' · store ',
      el('span', { className: f.store === 'ok' ? 'store-ok' : 'store-degraded', dataset: { store: f.store } }, f.store)));
    box.appendChild(el('table', null,
      el('thead', null, el('tr', null, ['replica', 'admin', 'version', 'last seen', ''].map(function (h) { return el('th', null, h); }))),
      el('tbody', null, rows)));
    box.hidden = false;
  }

  function show(stats, routes) {
    var now = Date.now();
    state.stats = stats;
    state.routes = routes;
    record(stats, now);
    var key = layoutKeyOf(stats);
    if (key !== state.layoutKey) {
      state.layoutKey = key;
      buildLayout();
    }
    renderNumbers();
    renderCharts();
    renderPromotion();
    renderFleet();
    state.polls += 1;
    state.failures = 0;
    document.body.dataset.polls = String(state.polls);
    setConn(true, 'live · ' + clock(new Date(now)));
  }

  // --- controls ----------------------------------------------------------------

  function setWindow(w) {
    state.window = w;
    sessionStorage.setItem('shadowgate.window', w);
    Array.prototype.forEach.call(document.querySelectorAll('[data-window]'), function (b) {
      if (b.tagName === 'BUTTON') b.setAttribute('aria-pressed', b.dataset.window === w ? 'true' : 'false');
    });
    document.body.dataset.window = w;
    if (state.stats) {
      renderNumbers();
      renderCharts();
    }
  }

  function showView() {
    var view = currentView();
    Array.prototype.forEach.call(document.querySelectorAll('.tab'), function (t) {
      t.setAttribute('aria-selected', t.dataset.view === view ? 'true' : 'false');
    });
    Array.prototype.forEach.call(document.querySelectorAll('section.view'), function (s) {
      s.hidden = s.dataset.view !== view;
    });
    document.body.dataset.view = view;
    document.querySelector('.window-select').classList.toggle('inactive', view !== 'traffic');
    if (view === 'diffs') diffs.refresh(true);
    if (view === 'traffic' && state.stats) renderCharts();
  }

  Array.prototype.forEach.call(document.querySelectorAll('.window-select button'), function (b) {
    b.addEventListener('click', function () { setWindow(b.dataset.window); });
  });
  Array.prototype.forEach.call(document.querySelectorAll('.tab'), function (t) {
    t.addEventListener('click', function () {
      var hash = t.dataset.view === 'diffs' ? '#diffs' : '#traffic';
      if (window.location.hash !== hash) history.replaceState(null, '', window.location.pathname + window.location.search + hash);
      showView();
    });
  });
  window.addEventListener('hashchange', showView);

  setWindow(state.window);
  showView();
  poll();
})();
