/* slide-triage viewer: OpenSeadragon viewers with the run's evidence drawn over the slide (pipeline/viewer/server.py).
 *
 * Every panel (section.panel[data-slide]) gets a viewer of /dz/<id>.dzi and a canvas over it on which the
 * overlays are drawn in level-0 pixel coordinates (tiles, tissue outline, top tiles), from /api/slide/<id>.json.
 * Switches, legend and scale bar (um, from the slide's um/px) live beside the image. Case views synchronise the
 * viewers by position relative to each slide's size; `transform` is the hook for a registration.
 * With ?selftest=1 the page checks itself and writes the results on <html data-selftest-*> (tests read them).
 */
(function () {
  'use strict';
  var panels = [];
  var leader = null;
  var syncing = false;

  // Hook for a registration between slides: maps a rectangle normalised to slide `from`'s size (x, y, w, h in
  // 0..1) to one normalised to slide `to`'s size. No registration exists yet: the identity.
  function transform(rect, from, to) { return rect; }  // eslint-disable-line no-unused-vars

  function fetchJSON(url) {
    return fetch(url).then(function (r) {
      if (!r.ok) { throw new Error(url + ': HTTP ' + r.status); }
      return r.json();
    });
  }

  function rgba(c, a) { return 'rgba(' + c[0] + ',' + c[1] + ',' + c[2] + ',' + a + ')'; }

  function ramp(stops, t) {
    t = Math.max(0, Math.min(1, t)) * (stops.length - 1);
    var i = Math.min(stops.length - 2, Math.floor(t)), f = t - i, a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
  }

  function active(panel) {
    return [].filter.call(panel.el.querySelectorAll('input[data-overlay]'), function (i) { return i.checked; })
      .map(function (i) { return i.getAttribute('data-overlay'); });
  }

  // ---- drawing -------------------------------------------------------------------------------------------
  function frame(panel) {
    var item = panel.viewer.world.getItemAt(0);
    var p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    var p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1000, 0));
    return {x: p0.x, y: p0.y, s: (p1.x - p0.x) / 1000};
  }

  function drawTiles(ctx, f, data, fill, stroke) {
    var box = data.overlays.tiles.box;
    for (var i = 0; i < box.length; i++) {
      var colour = fill(i);
      if (!colour) { continue; }
      var b = box[i], x = f.x + b[0] * f.s, y = f.y + b[1] * f.s, w = b[2] * f.s, h = b[3] * f.s;
      ctx.fillStyle = colour;
      ctx.fillRect(x, y, w, h);
      if (stroke) { ctx.strokeStyle = stroke(i); ctx.strokeRect(x, y, w, h); }
    }
  }

  function drawOverlay(panel, key, ctx, f) {
    var o = panel.data.overlays, colours = o.colours;
    if (key.indexOf('heat:') === 0) {
      var m = key.slice(5), values = o.tiles[m] || [];
      var range = (o.measures.filter(function (x) { return x.key === m; })[0] || {range: [0, 1]}).range;
      drawTiles(ctx, f, panel.data, function (i) {
        var v = values[i];
        return (v === null || v === undefined) ? null :
          rgba(ramp(colours.colormap, (v - range[0]) / (range[1] - range[0])), 0.55);
      });
    } else if (key === 'classes' || key === 'positive') {
      drawTiles(ctx, f, panel.data, function (i) {
        var c = o.tiles.cls[i];
        if (!c || (key === 'positive' && c !== 'Positive')) { return null; }
        return rgba(colours.classes[c] || [128, 128, 128], 0.4);
      }, function (i) { return rgba(colours.classes[o.tiles.cls[i]] || [128, 128, 128], 0.9); });
    } else if (key === 'tissue') {
      ctx.strokeStyle = rgba(colours.tissue, 1);
      ctx.lineWidth = 2;
      o.tissue.forEach(function (ring) {
        ctx.beginPath();
        ring.forEach(function (p, j) {
          var x = f.x + p[0] * f.s, y = f.y + p[1] * f.s;
          if (j) { ctx.lineTo(x, y); } else { ctx.moveTo(x, y); }
        });
        ctx.closePath();
        ctx.stroke();
      });
      ctx.lineWidth = 1;
    } else if (key === 'top') {
      ctx.lineWidth = 3;
      ctx.font = 'bold 13px sans-serif';
      o.top.forEach(function (t) {
        var c = colours.classes[t.group] || [255, 140, 0];
        var x = f.x + t.x * f.s, y = f.y + t.y * f.s, w = Math.max(t.size * f.s, 6);
        ctx.strokeStyle = rgba(c, 1);
        ctx.strokeRect(x, y, w, w);
        ctx.fillStyle = rgba(c, 1);
        ctx.fillText(String(t.rank), x + 3, y + 14);
      });
      ctx.lineWidth = 1;
    }
  }

  function redraw(panel) {
    var canvas = panel.canvas, viewer = panel.viewer;
    var w = viewer.container.clientWidth, h = viewer.container.clientHeight, r = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * r) || canvas.height !== Math.round(h * r)) {
      canvas.width = Math.round(w * r);
      canvas.height = Math.round(h * r);
    }
    var ctx = canvas.getContext('2d');
    ctx.setTransform(r, 0, 0, r, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (!viewer.world.getItemCount()) { return; }
    var f = frame(panel);
    active(panel).forEach(function (key) { drawOverlay(panel, key, ctx, f); });
    scaleBar(panel, f);
  }

  // ---- legend and scale bar ------------------------------------------------------------------------------
  function legendItem(html, style, cls) {
    var item = document.createElement('div'), mark = document.createElement('span'), text = document.createElement('span');
    item.className = 'item';
    mark.className = cls;
    Object.keys(style).forEach(function (k) { mark.style[k] = style[k]; });
    text.textContent = html;
    item.appendChild(mark);
    item.appendChild(text);
    return item;
  }

  function legend(panel) {
    var box = panel.el.querySelector('.legend'), o = panel.data.overlays, colours = o.colours;
    box.textContent = '';
    active(panel).forEach(function (key) {
      if (key.indexOf('heat:') === 0) {
        var m = key.slice(5), range = (o.measures.filter(function (x) { return x.key === m; })[0] || {}).range || [0, 1];
        var grad = 'linear-gradient(to right,' + colours.colormap.map(function (c) { return rgba(c, 1); }).join(',') + ')';
        box.appendChild(legendItem(m + ': ' + range[0] + ' \u2013 ' + range[1], {background: grad}, 'ramp'));
      } else if (key === 'classes') {
        ['carcinoma', 'sarcoma', 'non_tumour'].forEach(function (c) {
          box.appendChild(legendItem('tile class: ' + c, {background: rgba(colours.classes[c], 0.6)}, 'swatch'));
        });
      } else if (key === 'positive') {
        var cut = o.cutoff || {};
        box.appendChild(legendItem('positive tile: ' + cut.metric + ' \u2265 ' + cut.value,
                                   {background: rgba(colours.classes.Positive, 0.6)}, 'swatch'));
      } else if (key === 'tissue') {
        box.appendChild(legendItem('tissue outline (QC mask)', {borderColor: rgba(colours.tissue, 1)}, 'line'));
      } else if (key === 'top') {
        var groups = {};
        o.top.forEach(function (t) { groups[t.group] = t.measure; });
        Object.keys(groups).forEach(function (g) {
          box.appendChild(legendItem('top tiles by ' + groups[g] + ' (1 = highest)',
                                     {borderColor: rgba(colours.classes[g] || [255, 140, 0], 1)}, 'line'));
        });
      }
    });
  }

  var BAR_UM = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000];

  function scaleBar(panel, f) {
    var bar = panel.el.querySelector('.scalebar');
    var pxPerUm = f.s / panel.data.slide.mpp, best = BAR_UM[0];
    BAR_UM.forEach(function (um) { if (um * pxPerUm <= 160) { best = um; } });
    bar.querySelector('em').textContent = best >= 1000 ? (best / 1000) + ' mm' : best + ' \u00b5m';
    bar.querySelector('span').style.width = Math.round(best * pxPerUm) + 'px';
  }

  // ---- synchronised navigation ---------------------------------------------------------------------------
  function normalised(panel) {
    var item = panel.viewer.world.getItemAt(0), b = item.viewportToImageRectangle(panel.viewer.viewport.getBounds());
    var W = panel.data.slide.width_px, H = panel.data.slide.height_px;
    return {x: b.x / W, y: b.y / H, w: b.width / W, h: b.height / H};
  }

  function follow(from) {
    var box = document.getElementById('sync');
    if (syncing || from !== leader || !box || !box.checked) { return; }
    syncing = true;
    var rect = normalised(from);
    panels.forEach(function (p) {
      if (p === from || !p.viewer || !p.viewer.world.getItemCount()) { return; }
      var r = transform(rect, from.id, p.id), W = p.data.slide.width_px, H = p.data.slide.height_px;
      var item = p.viewer.world.getItemAt(0);
      p.viewer.viewport.fitBounds(item.imageToViewportRectangle(r.x * W, r.y * H, r.w * W, r.h * H), true);
    });
    syncing = false;
  }

  // ---- set-up --------------------------------------------------------------------------------------------
  function setup(el) {
    var panel = {el: el, id: el.getAttribute('data-slide'), tiles: 0};
    panels.push(panel);
    return fetchJSON('/api/slide/' + encodeURIComponent(panel.id) + '.json').then(function (data) {
      panel.data = data;
      panel.viewer = OpenSeadragon({
        element: el.querySelector('.viewer'), prefixUrl: '/osd/images/', tileSources: '/dz/' + panel.id + '.dzi',
        drawer: 'canvas', showNavigator: true, navigatorPosition: 'TOP_RIGHT', animationTime: 0.4,
        maxZoomPixelRatio: 2, visibilityRatio: 0.5, gestureSettingsMouse: {clickToZoom: false}
      });
      panel.canvas = document.createElement('canvas');
      panel.canvas.className = 'overlay';
      panel.canvas.style.cssText = 'position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none';
      panel.viewer.canvas.appendChild(panel.canvas);
      panel.viewer.addHandler('tile-loaded', function () { panel.tiles += 1; });
      panel.viewer.addHandler('tile-load-failed', function () { panel.failed = (panel.failed || 0) + 1; });
      panel.viewer.addHandler('update-viewport', function () { redraw(panel); });
      panel.viewer.addHandler('viewport-change', function () { follow(panel); });
      el.addEventListener('pointerenter', function () { leader = panel; });
      el.addEventListener('wheel', function () { leader = panel; }, {passive: true});
      [].forEach.call(el.querySelectorAll('input[data-overlay]'), function (input) {
        input.addEventListener('change', function () { legend(panel); redraw(panel); });
      });
      legend(panel);
      if (!leader) { leader = panel; }
      return new Promise(function (resolve, reject) {
        panel.viewer.addOnceHandler('open', resolve);
        panel.viewer.addOnceHandler('open-failed', function (e) { reject(new Error(panel.id + ': ' + e.message)); });
      });
    });
  }

  // ---- self-test (tests drive headless Chromium with ?selftest=1 and read <html data-selftest-*>) ---------
  function hash(panel) {
    var out = document.createElement('canvas'), a = panel.viewer.drawer.canvas, b = panel.canvas;
    out.width = a.width;
    out.height = a.height;
    var ctx = out.getContext('2d');
    ctx.drawImage(a, 0, 0);
    ctx.drawImage(b, 0, 0, a.width, a.height);
    var px = ctx.getImageData(0, 0, out.width, out.height).data, h = 2166136261;
    for (var i = 0; i < px.length; i += 4) { h = Math.imul(h ^ (px[i] + 256 * px[i + 1] + 65536 * px[i + 2]), 16777619); }
    return (h >>> 0).toString(16);
  }

  function selftest() {
    var root = document.documentElement, set = function (k, v) { root.setAttribute('data-selftest-' + k, v); };
    var shown = panels.filter(function (p) { return p.viewer; }), polls = 0, last = '', still = 0;
    var ready = new Promise(function (resolve, reject) {
      // Ready when every viewer has drawn tiles and is fully loaded, or has loaded no new tile for 2 s (headless
      // Chromium's virtual time sometimes leaves OpenSeadragon's fully-loaded flag unset).
      (function poll() {
        var count = shown.map(function (p) { return p.tiles; }).join(',');
        still = count === last ? still + 1 : 0;
        last = count;
        var done = shown.every(function (p) {
          var item = p.viewer.world.getItemAt(0);
          return item && p.tiles > 0 && (item.getFullyLoaded() || still >= 20);
        });
        set('polls', ++polls);
        set('state', shown.map(function (p) {
          var item = p.viewer.world.getItemAt(0);
          return p.id + ':' + (item ? item.getFullyLoaded() : 'none') + ':' + p.tiles + ':' + (p.failed || 0);
        }).join(' '));
        if (done) { resolve(); } else if (polls > 300) { reject(new Error('tiles not loaded after 30 s')); } else {
          setTimeout(poll, 100);
        }
      })();
    });
    ready.then(function () {
      var p = shown[0], box = p.el.querySelector('input[data-overlay="tissue"]');
      redraw(p);
      var before = hash(p);
      box.click();
      var after = hash(p);
      set('tiles', shown.map(function (q) { return q.id + ':' + q.tiles; }).join(' '));
      set('hash-before', before);
      set('hash-after', after);
      set('legend', p.el.querySelector('.legend').textContent);
      set('scalebar', p.el.querySelector('.scalebar').textContent);
      if (shown.length > 1 && document.getElementById('sync')) {  // zoom and pan the first: the others follow
        var lead = shown[0], vp = lead.viewer.viewport;
        leader = lead;
        vp.zoomBy(3, null, true);
        vp.panBy(new OpenSeadragon.Point(0.05, 0.03), true);
        follow(lead);
        var a = normalised(lead), worst = 0;
        shown.slice(1).forEach(function (q) {
          var b = normalised(q);
          worst = Math.max(worst, Math.abs(a.x + a.w / 2 - b.x - b.w / 2), Math.abs(a.y + a.h / 2 - b.y - b.h / 2));
        });
        set('sync-offset', worst.toFixed(4));
        set('sync-zoomed', (a.w < 0.6).toString());
      }
      set('done', 'yes');
    }).catch(function (e) { set('error', String(e)); });
  }

  function start() {
    var root = document.documentElement;
    if (!window.OpenSeadragon) { root.setAttribute('data-osd', 'missing'); return; }
    root.setAttribute('data-osd', OpenSeadragon.version.versionStr);
    var els = [].slice.call(document.querySelectorAll('section.panel[data-viewable="yes"]'));
    var all = Promise.all(els.map(setup));
    if (/[?&]selftest=1\b/.test(window.location.search)) {
      all.then(selftest, function (e) { root.setAttribute('data-selftest-error', String(e)); });
    }
  }

  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', start); } else { start(); }
})();
