// The diff explorer: per route, the endpoints whose primary and mirror
// answers differ, their differing field paths (noise marked), and example
// pairs side by side with the differences highlighted. Reads
// /api/v1/diffs, /api/v1/diffs/{route} and /api/v1/diffs/{route}/examples;
// when comparison is not enabled those answer 404 and the explorer says so.
(function (global) {
  'use strict';

  var el = global.ShadowDom.el;
  var clear = global.ShadowDom.clear;
  var fmt = global.ShadowDom.fmt;
  var J = global.ShadowJson;

  var REPROBE_MS = 60000;
  var MAX_LINES = 4000;

  function diffPercent(r) {
    return r.compared > 0 ? (r.different * 100) / r.compared : null;
  }

  function create(options) {
    var root = options.container;
    var getJson = options.getJson;
    var onSummary = options.onSummary || function () {};

    var st = {
      enabled: undefined, // unknown until the first answer
      lastProbe: 0,
      summary: [],
      error: null,
      route: null,
      endpoints: null,
      endpointsError: null,
      selected: null, // {endpoint, mirror}
      examples: null,
      examplesError: null,
      exampleIndex: 0,
      loadingExamples: false,
    };

    // --- fetching ----------------------------------------------------------

    function refresh(visible) {
      var now = Date.now();
      if (st.enabled === false && now - st.lastProbe < REPROBE_MS) return Promise.resolve();
      st.lastProbe = now;
      return getJson('api/v1/diffs').then(function (data) {
        st.enabled = true;
        st.error = null;
        st.summary = (data && data.routes) || [];
        onSummary(st.summary);
        if (!st.route && st.summary.length) {
          var busiest = st.summary.slice().sort(function (a, b) { return b.different - a.different; })[0];
          st.route = busiest.route;
        }
        if (visible && st.route) return loadEndpoints();
      }, function (e) {
        if (e.status === 404) {
          st.enabled = false;
          st.summary = [];
          onSummary(null);
        } else {
          st.error = e.message;
        }
      }).then(function () { render(); });
    }

    function loadEndpoints() {
      var route = st.route;
      return getJson('api/v1/diffs/' + encodeURIComponent(route)).then(function (data) {
        if (route !== st.route) return;
        st.endpoints = (data && data.endpoints) || [];
        st.endpointsError = null;
        if (!st.selected && st.endpoints.length) {
          var first = sortedEndpoints()[0];
          selectEndpoint(first.endpoint, first.mirror);
        }
      }, function (e) {
        if (route !== st.route) return;
        st.endpoints = null;
        st.endpointsError = e.status === 404 ? 'no comparisons for this route yet' : e.message;
      });
    }

    function selectRoute(route) {
      if (route === st.route) return;
      st.route = route;
      st.endpoints = null;
      st.selected = null;
      st.examples = null;
      render('example');
      loadEndpoints().then(function () { render(); });
    }

    function selectEndpoint(endpoint, mirror) {
      st.selected = { endpoint: endpoint, mirror: mirror };
      st.examples = null;
      st.examplesError = null;
      st.exampleIndex = 0;
      st.loadingExamples = true;
      render('example');
      var route = st.route;
      var path = 'api/v1/diffs/' + encodeURIComponent(route) + '/examples?endpoint=' +
        encodeURIComponent(endpoint) + '&mirror=' + encodeURIComponent(mirror);
      getJson(path).then(function (data) {
        if (!sameSelection(route, endpoint, mirror)) return;
        st.examples = (data && data.examples) || [];
      }, function (e) {
        if (!sameSelection(route, endpoint, mirror)) return;
        st.examplesError = e.status === 404 ? 'no examples kept for this endpoint' : e.message;
      }).then(function () {
        if (!sameSelection(route, endpoint, mirror)) return;
        st.loadingExamples = false;
        render('example');
      });
    }

    function sameSelection(route, endpoint, mirror) {
      return st.route === route && st.selected && st.selected.endpoint === endpoint && st.selected.mirror === mirror;
    }

    function sortedEndpoints() {
      return (st.endpoints || []).slice().sort(function (a, b) {
        return b.different - a.different || (a.endpoint < b.endpoint ? -1 : a.endpoint > b.endpoint ? 1 : 0);
      });
    }

    // --- rendering ---------------------------------------------------------

    // The view is three boxes, each rebuilt only when its own data changed,
    // so a refresh neither moves the page nor loses a scroll position.
    var boxes = null;
    var shownKeys = { summary: null, endpoints: null };

    function render(part) {
      if (st.enabled !== true) {
        boxes = null;
        shownKeys = { summary: null, endpoints: null };
        clear(root);
        if (st.enabled === undefined) {
          root.appendChild(el('p', { className: 'placeholder' }, st.error ? 'Comparisons unavailable: ' + st.error : 'Loading comparisons…'));
        } else {
          root.appendChild(el('div', { className: 'empty-state', dataset: { state: 'comparison-disabled' } },
            el('h2', null, 'Comparison not enabled'),
            el('p', null, 'This shadowgate does not compare primary and mirror answers: the diff API answered 404. ' +
              'Turn on comparison for a mirror and the endpoints whose answers differ show up here.')));
        }
        return;
      }
      if (!boxes) {
        clear(root);
        boxes = {
          summary: el('div', { className: 'panel diffs-summary' }),
          endpoints: el('div', { className: 'panel diffs-endpoints' }),
          example: el('div', { className: 'panel diffs-example' }),
          warn: el('p', { className: 'warn', hidden: true }),
        };
        root.appendChild(el('div', { className: 'diffs-layout' }, boxes.summary,
          el('div', { className: 'diffs-detail' }, boxes.endpoints, boxes.example)));
        root.appendChild(boxes.warn);
        part = 'all';
      }
      boxes.warn.hidden = !st.error;
      boxes.warn.textContent = st.error ? 'Last refresh failed: ' + st.error : '';
      var summaryKey = JSON.stringify([st.summary, st.route]);
      if (part === 'all' || summaryKey !== shownKeys.summary) {
        shownKeys.summary = summaryKey;
        fill(boxes.summary, renderSummary());
      }
      var endpointsKey = JSON.stringify([st.route, st.endpoints, st.endpointsError, st.selected]);
      if (part === 'all' || endpointsKey !== shownKeys.endpoints) {
        shownKeys.endpoints = endpointsKey;
        fill(boxes.endpoints, renderEndpoints());
      }
      if (part === 'all' || part === 'example') {
        fill(boxes.example, renderExamples());
        scrollToFirstDifference();
      }
    }

    function fill(box, content) {
      clear(box);
      while (content.firstChild) box.appendChild(content.firstChild);
    }

    function renderSummary() {
      var box = el('div', { className: 'panel diffs-summary' }, el('h2', null, 'Compared answers'));
      if (!st.summary.length) {
        box.appendChild(el('p', { className: 'muted' }, 'No mirror is compared yet.'));
        return box;
      }
      var table = el('table', { className: 'grid' },
        el('thead', null, el('tr', null,
          el('th', null, 'Route'), el('th', null, 'Mirror'), el('th', { className: 'n' }, 'Compared'),
          el('th', { className: 'n' }, 'Different'), el('th', { className: 'n' }, 'Diff %'))));
      var body = el('tbody');
      st.summary.forEach(function (r) {
        var ds = { route: r.route, mirror: r.mirror };
        var tr = el('tr', {
          className: 'clickable' + (r.route === st.route ? ' selected' : ''),
          tabIndex: 0,
          dataset: { route: r.route, mirror: r.mirror },
          title: 'equal ' + r.equal + ', noise only ' + r.noise_only + ', truncated ' + r.truncated,
          on: {
            click: function () { selectRoute(r.route); },
            keydown: function (e) { if (e.key === 'Enter') selectRoute(r.route); },
          },
        },
          el('td', null, r.route),
          el('td', null, r.mirror),
          numCell(r.compared, 'compared', ds),
          numCell(r.different, 'different', ds),
          el('td', { className: 'n' }, el('span', {
            className: 'num' + (r.different > 0 ? ' bad' : ''),
            dataset: { route: r.route, mirror: r.mirror, field: 'diff_percent', value: diffPercent(r) === null ? '' : diffPercent(r) },
          }, fmt.pct(diffPercent(r)))));
        body.appendChild(tr);
      });
      table.appendChild(body);
      box.appendChild(table);
      return box;
    }

    function numCell(v, field, ds) {
      var d = { field: field, value: v };
      Object.keys(ds).forEach(function (k) { d[k] = ds[k]; });
      return el('td', { className: 'n' }, el('span', { className: 'num', dataset: d }, fmt.count(v)));
    }

    function renderEndpoints() {
      var box = el('div', { className: 'panel diffs-endpoints' },
        el('h2', null, 'Endpoints', st.route ? el('span', { className: 'muted' }, ' · ' + st.route) : null));
      if (st.endpointsError) {
        box.appendChild(el('p', { className: 'muted' }, st.endpointsError));
        return box;
      }
      if (!st.endpoints) {
        box.appendChild(el('p', { className: 'muted' }, st.route ? 'Loading…' : 'Pick a route.'));
        return box;
      }
      if (!st.endpoints.length) {
        box.appendChild(el('p', { className: 'muted' }, 'Nothing compared on this route yet.'));
        return box;
      }
      var table = el('table', { className: 'grid endpoints' },
        el('thead', null, el('tr', null,
          el('th', null, 'Endpoint'), el('th', null, 'Mirror'),
          el('th', { className: 'n' }, 'Compared'), el('th', { className: 'n' }, 'Different'),
          el('th', { className: 'n' }, 'Diff %'), el('th', { className: 'n' }, 'Noise only'),
          el('th', { className: 'n' }, 'Truncated'))));
      var body = el('tbody');
      sortedEndpoints().forEach(function (ep) {
        var selected = st.selected && st.selected.endpoint === ep.endpoint && st.selected.mirror === ep.mirror;
        var ds = { route: st.route, endpoint: ep.endpoint, mirror: ep.mirror };
        var pick = function () { selectEndpoint(ep.endpoint, ep.mirror); };
        body.appendChild(el('tr', {
          className: 'clickable endpoint' + (selected ? ' selected' : ''),
          tabIndex: 0,
          dataset: ds,
          on: { click: pick, keydown: function (e) { if (e.key === 'Enter') pick(); } },
        },
          el('td', { className: 'mono' }, ep.endpoint),
          el('td', null, ep.mirror),
          numCell(ep.compared, 'compared', ds),
          numCell(ep.different, 'different', ds),
          el('td', { className: 'n' }, fmt.pct(diffPercent(ep))),
          numCell(ep.noise_only, 'noise_only', ds),
          numCell(ep.truncated, 'truncated', ds)));
        var fields = (ep.fields || []).slice().sort(function (a, b) {
          return (a.noise === b.noise ? 0 : a.noise ? 1 : -1) || b.different - a.different;
        });
        var chips = el('div', { className: 'chips' });
        if (!fields.length) chips.appendChild(el('span', { className: 'muted' }, 'no differing fields'));
        fields.forEach(function (f) {
          chips.appendChild(el('span', {
            className: 'chip' + (f.noise ? ' noise' : ''),
            dataset: { endpoint: ep.endpoint, mirror: ep.mirror, path: f.path, noise: f.noise ? 'true' : 'false' },
            title: f.noise
              ? 'noise: differs in ' + f.different + ' pairs, and ' + f.noise_count +
                ' times between two instances of the primary version too; not counted as a difference'
              : 'differs in ' + f.different + ' compared pairs',
          }, el('span', { className: 'mono' }, f.path), ' ',
            el('b', null, fmt.count(f.different)),
            f.noise ? el('span', { className: 'tag' }, 'noise') : null));
        });
        body.appendChild(el('tr', { className: 'fields' + (selected ? ' selected' : '') }, el('td', { colSpan: 7 }, chips)));
      });
      table.appendChild(body);
      box.appendChild(table);
      return box;
    }

    function renderExamples() {
      var box = el('div', { className: 'panel diffs-example' });
      if (!st.selected) {
        box.appendChild(el('p', { className: 'muted' }, 'Pick an endpoint to see an example pair.'));
        return box;
      }
      var head = el('div', { className: 'example-head' },
        el('h2', null, 'Example', el('span', { className: 'muted mono' }, ' · ' + st.selected.endpoint + ' · mirror ' + st.selected.mirror)));
      box.appendChild(head);
      if (st.loadingExamples) {
        box.appendChild(el('p', { className: 'muted' }, 'Loading…'));
        return box;
      }
      if (st.examplesError || !st.examples || !st.examples.length) {
        box.appendChild(el('p', { className: 'muted' }, st.examplesError || 'No example pair kept for this endpoint.'));
        return box;
      }
      var n = st.examples.length;
      var idx = Math.min(st.exampleIndex, n - 1);
      var ex = st.examples[idx];
      var nav = el('div', { className: 'pager' },
        el('button', { type: 'button', disabled: idx === 0, textContent: '‹', title: 'previous example',
          on: { click: function () { st.exampleIndex = idx - 1; render('example'); } } }),
        el('span', { dataset: { field: 'example-index' } }, (idx + 1) + ' of ' + n),
        el('button', { type: 'button', disabled: idx >= n - 1, textContent: '›', title: 'next example',
          on: { click: function () { st.exampleIndex = idx + 1; render('example'); } } }));
      head.appendChild(nav);
      box.appendChild(renderExample(ex));
      return box;
    }

    function renderExample(ex) {
      var diffs = ex.differences || [];
      var wrap = el('div', { className: 'example' });
      var req = ex.request || {};
      var reqHeaders = req.headers || {};
      wrap.appendChild(el('div', { className: 'request-line mono' },
        el('b', null, req.method || ''), ' ', req.path || '',
        Object.keys(reqHeaders).length ? el('details', null, el('summary', null, 'request headers'),
          headerTable(reqHeaders, {})) : null));

      var dt = el('table', { className: 'grid differences' },
        el('thead', null, el('tr', null, el('th', null, 'Path'), el('th', null, 'Kind'),
          el('th', null, 'Primary'), el('th', null, 'Shadow'))));
      var db = el('tbody');
      if (!diffs.length) db.appendChild(el('tr', null, el('td', { colSpan: 4, className: 'muted' }, 'no differences in this pair')));
      diffs.forEach(function (d) {
        db.appendChild(el('tr', { dataset: { path: d.path, kind: d.kind } },
          el('td', { className: 'mono' }, d.path), el('td', null, String(d.kind || '').replace(/_/g, ' ')),
          el('td', { className: 'mono' }, d.primary === null || d.primary === undefined ? '(absent)' : String(d.primary)),
          el('td', { className: 'mono' }, d.other === null || d.other === undefined ? '(absent)' : String(d.other))));
      });
      dt.appendChild(db);
      wrap.appendChild(dt);

      wrap.appendChild(el('div', { className: 'pair' },
        side('primary', 'Primary', ex.primary || {}, diffs, 'primary'),
        side('shadow', 'Shadow · ' + (ex.mirror || (st.selected && st.selected.mirror) || ''), ex.shadow || {}, diffs, 'other')));
      return wrap;
    }

    // What to highlight on one side: the status, header names, body paths.
    function marksFor(diffs) {
      var m = { status: false, headers: {}, body: false, paths: [] };
      diffs.forEach(function (d) {
        var p = String(d.path || '');
        if (p === 'status') m.status = true;
        else if (p.indexOf('header.') === 0) m.headers[p.slice(7).toLowerCase()] = true;
        else if (p === 'body') m.body = true;
        else m.paths.push(p);
      });
      return m;
    }

    function side(which, title, resp, diffs, key) {
      var m = marksFor(diffs);
      var box = el('div', { className: 'side', dataset: { side: which } });
      box.appendChild(el('h3', null, title));
      box.appendChild(el('div', { className: 'status-line mono' + (m.status ? ' diff' : ''), dataset: { side: which, field: 'status' } },
        'HTTP ' + (resp.status === undefined ? '?' : resp.status)));
      var headers = resp.headers || {};
      // A differing header this side lacks is listed as absent.
      Object.keys(m.headers).forEach(function (h) {
        var has = Object.keys(headers).some(function (k) { return k.toLowerCase() === h; });
        if (!has) {
          var d = diffs.filter(function (x) { return String(x.path).toLowerCase() === 'header.' + h; })[0];
          if (d && (d[key] === null || d[key] === undefined)) headers = Object.assign({}, headers, (function () { var o = {}; o[h] = null; return o; })());
        }
      });
      box.appendChild(headerTable(headers, m.headers, which));
      box.appendChild(bodyView(resp.body, m, which));
      return box;
    }

    function headerTable(headers, marked, which) {
      var table = el('table', { className: 'headers mono' });
      Object.keys(headers).sort().forEach(function (name) {
        var v = headers[name];
        var values = Array.isArray(v) ? v : [v];
        values.forEach(function (value) {
          var hit = marked[name.toLowerCase()];
          table.appendChild(el('tr', { className: hit ? 'diff' : '', dataset: { side: which, header: name.toLowerCase() } },
            el('td', { className: 'hname' }, name + ':'),
            el('td', null, value === null ? '(absent)' : String(value))));
        });
      });
      return table;
    }

    function bodyView(body, m, which) {
      var v = J.view(body);
      var box = el('div', { className: 'code' + (m.body ? ' diff-all' : ''), dataset: { side: which, kind: v.kind } });
      if (v.kind === 'empty' || !v.lines.length) {
        box.appendChild(el('div', { className: 'muted pad' }, '(no body)'));
        return box;
      }
      var hit = {};
      var near = {};
      m.paths.forEach(function (p) {
        var span = v.spans[p];
        if (span) {
          for (var i = span[0]; i <= span[1]; i++) hit[i] = p;
        } else {
          var anc = J.nearest(v.spans, p);
          if (anc) near[v.spans[anc][0]] = p;
        }
      });
      var frag = document.createDocumentFragment();
      var shown = Math.min(v.lines.length, MAX_LINES);
      for (var i = 0; i < shown; i++) {
        var line = v.lines[i];
        var cls = 'ln' + (hit[i] !== undefined ? ' diff' : near[i] !== undefined ? ' diff-near' : '');
        frag.appendChild(el('div', {
          className: cls,
          dataset: { path: line.path, diffPath: hit[i] !== undefined ? hit[i] : near[i] },
          title: near[i] !== undefined ? near[i] + ' is absent on this side' : undefined,
        }, el('span', { className: 'no' }, String(i + 1)), el('span', { className: 'tx' }, line.text || ' ')));
      }
      box.appendChild(frag);
      if (v.lines.length > shown) box.appendChild(el('div', { className: 'muted pad' }, '… ' + (v.lines.length - shown) + ' more lines'));
      return box;
    }

    function scrollToFirstDifference() {
      Array.prototype.forEach.call(root.querySelectorAll('.code'), function (code) {
        var first = code.querySelector('.ln.diff, .ln.diff-near');
        if (first) code.scrollTop = Math.max(0, first.offsetTop - code.offsetTop - 48);
      });
    }

    return { refresh: refresh, render: render, state: st };
  }

  global.ShadowDiffs = { create: create };
})(window);
