// Bodies for the diff explorer: a JSON reader that keeps every number and
// string exactly as written, a pretty-printer that knows the path of each
// line (`$.items[0].price`, `$["odd key"]`, the comparator's own notation),
// and a plain-text fallback whose lines are `line[N]` (from 1).
(function (global) {
  'use strict';

  // --- paths, as the comparator writes them -------------------------------

  function isPlainKey(k) {
    return /^[A-Za-z_-][A-Za-z0-9_-]*$/.test(k);
  }

  function quote(s) {
    var out = '"';
    for (var i = 0; i < s.length; i++) {
      var c = s[i];
      var code = s.charCodeAt(i);
      if (c === '"') out += '\\"';
      else if (c === '\\') out += '\\\\';
      else if (c === '\n') out += '\\n';
      else if (c === '\r') out += '\\r';
      else if (c === '\t') out += '\\t';
      else if (code < 0x20 || code === 0x7f) out += '\\u' + ('000' + code.toString(16)).slice(-4);
      else out += c;
    }
    return out + '"';
  }

  function keyPath(parent, key) {
    return isPlainKey(key) ? parent + '.' + key : parent + '[' + quote(key) + ']';
  }

  function indexPath(parent, i) {
    return parent + '[' + i + ']';
  }

  // --- reading JSON, keeping raw scalars ------------------------------------

  function parse(text) {
    var i = 0;
    var n = text.length;
    function ws() {
      while (i < n) {
        var c = text.charCodeAt(i);
        if (c === 32 || c === 9 || c === 10 || c === 13) i++;
        else break;
      }
    }
    function fail(what) {
      throw new SyntaxError(what + ' at offset ' + i);
    }
    function string() {
      var start = i;
      i++; // opening quote
      while (i < n) {
        var c = text[i];
        if (c === '\\') i += 2;
        else if (c === '"') { i++; return text.slice(start, i); }
        else if (text.charCodeAt(i) < 0x20) fail('control character in string');
        else i++;
      }
      fail('unterminated string');
    }
    function value(depth) {
      if (depth > 200) fail('nesting too deep');
      ws();
      var c = text[i];
      if (c === '{') {
        i++;
        var entries = [];
        ws();
        if (text[i] === '}') { i++; return { type: 'object', entries: entries }; }
        for (;;) {
          ws();
          if (text[i] !== '"') fail('expected a key');
          var raw = string();
          ws();
          if (text[i] !== ':') fail('expected ":"');
          i++;
          entries.push({ key: JSON.parse(raw), rawKey: raw, value: value(depth + 1) });
          ws();
          if (text[i] === ',') { i++; continue; }
          if (text[i] === '}') { i++; return { type: 'object', entries: entries }; }
          fail('expected "," or "}"');
        }
      }
      if (c === '[') {
        i++;
        var items = [];
        ws();
        if (text[i] === ']') { i++; return { type: 'array', items: items }; }
        for (;;) {
          items.push(value(depth + 1));
          ws();
          if (text[i] === ',') { i++; continue; }
          if (text[i] === ']') { i++; return { type: 'array', items: items }; }
          fail('expected "," or "]"');
        }
      }
      if (c === '"') return { type: 'scalar', raw: string() };
      var m = /^(?:-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null)/.exec(text.slice(i, i + 400));
      if (!m) fail('unexpected character');
      i += m[0].length;
      return { type: 'scalar', raw: m[0] };
    }
    var v = value(0);
    ws();
    if (i !== n) fail('trailing characters');
    return v;
  }

  // --- pretty-printing with a path per line ---------------------------------

  // Returns {lines: [{text, path}], spans: {path: [first, last]}}.
  function pretty(node) {
    var lines = [];
    var spans = {};
    function emit(text, path) {
      lines.push({ text: text, path: path });
      return lines.length - 1;
    }
    function walk(v, path, indent, prefix, comma) {
      var pad = '  '.repeat(indent);
      var first;
      if (v.type === 'object' || v.type === 'array') {
        var open = v.type === 'object' ? '{' : '[';
        var close = v.type === 'object' ? '}' : ']';
        var kids = v.type === 'object' ? v.entries : v.items;
        if (kids.length === 0) {
          first = emit(pad + prefix + open + close + comma, path);
          spans[path] = [first, first];
          return;
        }
        first = emit(pad + prefix + open, path);
        kids.forEach(function (k, idx) {
          var last = idx === kids.length - 1 ? '' : ',';
          if (v.type === 'object') walk(k.value, keyPath(path, k.key), indent + 1, k.rawKey + ': ', last);
          else walk(k, indexPath(path, idx), indent + 1, '', last);
        });
        var end = emit(pad + close + comma, path);
        spans[path] = [first, end];
        return;
      }
      first = emit(pad + prefix + v.raw + comma, path);
      spans[path] = [first, first];
    }
    walk(node, '$', 0, '', '');
    return { lines: lines, spans: spans };
  }

  // The body as lines with paths: pretty JSON when it parses, else text.
  // `body` is the string the API gave (or an already-decoded value).
  function view(body) {
    if (body === null || body === undefined) return { kind: 'empty', lines: [], spans: {} };
    var text = typeof body === 'string' ? body : JSON.stringify(body, null, 2);
    var trimmed = text.trim();
    if (trimmed && (trimmed[0] === '{' || trimmed[0] === '[' || trimmed[0] === '"')) {
      try {
        var p = pretty(parse(trimmed));
        p.kind = 'json';
        return p;
      } catch (e) {
        // not JSON after all: shown as text
      }
    }
    var spans = {};
    var lines = text.split('\n').map(function (t, idx) {
      var path = 'line[' + (idx + 1) + ']';
      spans[path] = [idx, idx];
      return { text: t, path: path };
    });
    if (lines.length && lines[lines.length - 1].text === '' && lines.length > 1) lines.pop();
    return { kind: 'text', lines: lines, spans: spans };
  }

  // The path itself if the view has it, else its nearest ancestor that it has.
  function nearest(spans, path) {
    var p = path;
    while (p) {
      if (Object.prototype.hasOwnProperty.call(spans, p)) return p;
      var cut = Math.max(p.lastIndexOf('.'), p.lastIndexOf('['));
      if (cut <= 0) break;
      p = p.slice(0, cut);
    }
    return Object.prototype.hasOwnProperty.call(spans, '$') ? '$' : null;
  }

  global.ShadowJson = {
    parse: parse,
    pretty: pretty,
    view: view,
    nearest: nearest,
    keyPath: keyPath,
    indexPath: indexPath,
  };
})(window);
