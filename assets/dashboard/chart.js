// A small time-series line chart drawn on <canvas>: a fixed time span
// ending now, one line per series, gaps where a value is missing, y axis
// from zero with round ticks, and a hover read-out.
(function (global) {
  'use strict';

  var FONT = '11px system-ui, -apple-system, "Segoe UI", sans-serif';
  var PAD = { left: 46, right: 10, top: 10, bottom: 18 };

  // The smallest "round" step (1, 2, 2.5, 5 × 10^n) giving at most `count` ticks up to max.
  function niceStep(max, count) {
    var raw = max / count;
    var mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * mag >= raw) return steps[i] * mag;
    }
    return 10 * mag;
  }

  function ago(ms) {
    var secs = Math.round(ms / 1000);
    if (secs < 60) return secs + 's';
    return secs % 60 === 0 ? secs / 60 + 'm' : Math.floor(secs / 60) + 'm' + (secs % 60) + 's';
  }

  // Axis numbers: as many decimals as the step needs, then the unit.
  function axisLabel(v, step, unit) {
    if (unit === 'ms' && v >= 1000) {
      unit = 's';
      v /= 1000;
      step /= 1000;
    }
    var decimals = Math.max(0, Math.min(3, Math.ceil(-Math.log10(step) + 1e-9)));
    if (step * Math.pow(10, decimals) % 1 > 1e-9) decimals += 1;
    var text = v === 0 ? '0' : v.toFixed(decimals);
    return text + unit;
  }

  function LineChart(canvas, options) {
    this.canvas = canvas;
    this.options = options || {};
    this.spanMs = this.options.spanMs || 5 * 60 * 1000;
    this.gapMs = this.options.gapMs || 15000;
    this.format = this.options.format || function (v) { return String(v); };
    this.minMax = this.options.minMax || 1;
    this.series = [];
    this.now = Date.now();
    this.hoverX = null;
    var self = this;
    canvas.addEventListener('mousemove', function (e) {
      var rect = canvas.getBoundingClientRect();
      self.hoverX = e.clientX - rect.left;
      self.draw();
    });
    canvas.addEventListener('mouseleave', function () {
      self.hoverX = null;
      self.draw();
    });
    if (typeof ResizeObserver === 'function') {
      new ResizeObserver(function () { self.draw(); }).observe(canvas);
    }
  }

  // series: [{label, color, dash (optional [on, off]), points: [[timeMs, value|null], ...]}]
  // The span shown: the history there is, from one minute up to spanMs.
  LineChart.prototype.update = function (series, now) {
    this.series = series;
    this.now = now || Date.now();
    var first = this.now;
    series.forEach(function (s) { if (s.points.length && s.points[0][0] < first) first = s.points[0][0]; });
    var minute = 60000;
    this.shownMs = Math.min(this.spanMs, Math.max(minute, Math.ceil((this.now - first) / minute) * minute));
    this.draw();
  };

  LineChart.prototype.draw = function () {
    var canvas = this.canvas;
    var width = canvas.clientWidth;
    var height = canvas.clientHeight;
    if (!width || !height) return;
    var dpr = global.devicePixelRatio || 1;
    var pw = Math.round(width * dpr);
    var ph = Math.round(height * dpr);
    if (canvas.width !== pw || canvas.height !== ph) {
      canvas.width = pw;
      canvas.height = ph;
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;

    var x0 = PAD.left;
    var x1 = width - PAD.right;
    var y0 = height - PAD.bottom;
    var y1 = PAD.top;
    var span = this.shownMs || this.spanMs;
    var start = this.now - span;
    function xOf(t) { return x0 + ((t - start) / span) * (x1 - x0); }

    // Scale: zero to a round number above the largest visible value.
    var max = 0;
    var any = false;
    this.series.forEach(function (s) {
      s.points.forEach(function (p) {
        if (p[1] !== null && p[0] >= start && isFinite(p[1])) {
          any = true;
          if (p[1] > max) max = p[1];
        }
      });
    });
    if (max <= 0) max = this.minMax;
    var step = niceStep(max, 4);
    var top = Math.ceil(max / step - 1e-9) * step;
    if (top <= 0) top = step;
    function yOf(v) { return y0 - (v / top) * (y0 - y1); }

    // Grid and y labels.
    ctx.strokeStyle = '#e2e8f0';
    ctx.fillStyle = '#64748b';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (var v = 0; v <= top + step / 2; v += step) {
      var y = Math.round(yOf(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x0, y);
      ctx.lineTo(x1, y);
      ctx.stroke();
      ctx.fillText(axisLabel(v, step, this.options.unit || ''), x0 - 6, y);
    }
    // x labels back from now, as far apart as they need to be to be read.
    var ticks = [10000, 15000, 30000, 60000, 120000, 300000];
    var tick = ticks[ticks.length - 1];
    for (var ti = 0; ti < ticks.length; ti++) {
      if ((ticks[ti] / span) * (x1 - x0) >= 44) { tick = ticks[ti]; break; }
    }
    ctx.textBaseline = 'top';
    ctx.textAlign = 'right';
    ctx.fillText('now', x1, y0 + 4);
    ctx.textAlign = 'center';
    for (var back = tick; back <= span; back += tick) {
      var x = xOf(this.now - back);
      if (x - x0 < 14 || x1 - x < 34) continue;
      ctx.fillText('−' + ago(back), x, y0 + 4);
    }

    if (!any) {
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillStyle = '#94a3b8';
      ctx.fillText(this.options.emptyText || 'no data yet', (x0 + x1) / 2, (y0 + y1) / 2);
    }

    // Lines, clipped to the plot.
    ctx.save();
    ctx.beginPath();
    ctx.rect(x0, y1 - 2, x1 - x0 + 1, y0 - y1 + 4);
    ctx.clip();
    var gap = this.gapMs;
    this.series.forEach(function (s) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width || 1.75;
      ctx.setLineDash(s.dash || []);
      ctx.lineJoin = 'round';
      ctx.beginPath();
      var prev = null;
      var lone = [];
      s.points.forEach(function (p, i) {
        if (p[1] === null || !isFinite(p[1])) { prev = null; return; }
        var px = xOf(p[0]);
        var py = yOf(p[1]);
        if (prev && p[0] - prev[0] <= gap) {
          ctx.lineTo(px, py);
        } else {
          ctx.moveTo(px, py);
          var next = s.points[i + 1];
          if (!next || next[1] === null || next[0] - p[0] > gap) lone.push([px, py]);
        }
        prev = p;
      });
      ctx.stroke();
      ctx.setLineDash([]);
      lone.forEach(function (q) {
        ctx.beginPath();
        ctx.arc(q[0], q[1], 2, 0, Math.PI * 2);
        ctx.fill();
      });
    });
    ctx.restore();

    // Hover: the values nearest the pointer's time.
    if (this.hoverX !== null && this.hoverX >= x0 && this.hoverX <= x1 && any) {
      var t = start + ((this.hoverX - x0) / (x1 - x0)) * span;
      var rows = [];
      var when = null;
      var fmt = this.format;
      this.series.forEach(function (s) {
        var best = null;
        s.points.forEach(function (p) {
          if (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
        });
        if (best && Math.abs(best[0] - t) <= gap) {
          when = best[0];
          rows.push({ label: s.label, color: s.color, text: best[1] === null ? '–' : fmt(best[1]) });
        }
      });
      if (rows.length) {
        var hx = Math.round(xOf(when)) + 0.5;
        ctx.strokeStyle = '#94a3b8';
        ctx.setLineDash([3, 3]);
        ctx.beginPath();
        ctx.moveTo(hx, y1);
        ctx.lineTo(hx, y0);
        ctx.stroke();
        ctx.setLineDash([]);
        var secsAgo = Math.round((this.now - when) / 1000);
        var title = secsAgo <= 0 ? 'now' : ago(secsAgo * 1000) + ' ago';
        var boxW = 0;
        rows.forEach(function (r) { boxW = Math.max(boxW, ctx.measureText(r.label + '  ' + r.text).width); });
        boxW = Math.max(boxW, ctx.measureText(title).width) + 24;
        var boxH = 16 * (rows.length + 1) + 6;
        var bx = hx + 8 + boxW > x1 ? hx - 8 - boxW : hx + 8;
        var by = y1 + 2;
        ctx.fillStyle = 'rgba(15, 23, 42, 0.88)';
        ctx.fillRect(bx, by, boxW, boxH);
        ctx.textAlign = 'left';
        ctx.textBaseline = 'top';
        ctx.fillStyle = '#cbd5e1';
        ctx.fillText(title, bx + 8, by + 4);
        rows.forEach(function (r, i) {
          var ry = by + 4 + 16 * (i + 1);
          ctx.fillStyle = r.color;
          ctx.fillRect(bx + 8, ry + 3, 8, 8);
          ctx.fillStyle = '#f8fafc';
          ctx.fillText(r.label + '  ' + r.text, bx + 20, ry);
        });
      }
    }
  };

  global.ShadowChart = { LineChart: LineChart, niceStep: niceStep, axisLabel: axisLabel };
})(window);
