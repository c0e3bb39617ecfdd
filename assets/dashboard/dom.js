// DOM helpers shared by the dashboard scripts. Text always goes in as text
// nodes: bodies and headers shown in the diff explorer come from backends.
(function (global) {
  'use strict';

  // el('td', {className: 'num', dataset: {field: 'rate'}, title: '…'}, 'text', childNode, …)
  function el(tag, props) {
    var node = document.createElement(tag);
    if (props) {
      Object.keys(props).forEach(function (k) {
        var v = props[k];
        if (v === undefined || v === null) return;
        if (k === 'dataset') {
          Object.keys(v).forEach(function (d) {
            if (v[d] !== undefined && v[d] !== null) node.dataset[d] = String(v[d]);
          });
        } else if (k === 'on') {
          Object.keys(v).forEach(function (ev) { node.addEventListener(ev, v[ev]); });
        } else if (k === 'attrs') {
          Object.keys(v).forEach(function (a) { node.setAttribute(a, v[a]); });
        } else {
          node[k] = v;
        }
      });
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === undefined || child === null || child === false) return;
    if (Array.isArray(child)) {
      child.forEach(function (c) { append(node, c); });
    } else if (typeof child === 'string' || typeof child === 'number') {
      node.appendChild(document.createTextNode(String(child)));
    } else {
      node.appendChild(child);
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  // Numbers as the terminal view shows them.
  function ms(v) {
    if (v === null || v === undefined) return '–';
    if (v >= 1000) return (v / 1000).toFixed(2) + 's';
    if (v >= 10) return v.toFixed(0) + 'ms';
    return v.toFixed(1) + 'ms';
  }

  function pct(v) {
    if (v === null || v === undefined) return '–';
    if (v === 0) return '0%';
    return (v >= 10 ? v.toFixed(1) : v.toFixed(2)) + '%';
  }

  function rate(v) {
    if (v === null || v === undefined) return '–';
    if (v === 0) return '0';
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1);
    return v.toFixed(2);
  }

  function count(v) {
    if (v === null || v === undefined) return '–';
    return Number(v).toLocaleString('en-US');
  }

  global.ShadowDom = { el: el, append: append, clear: clear, fmt: { ms: ms, pct: pct, rate: rate, count: count } };
})(window);
