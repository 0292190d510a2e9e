/* slide-triage viewer: OpenSeadragon viewers with the run's evidence drawn over the slide (pipeline/viewer/server.py).
 *
 * Every panel (section.panel[data-slide]) gets a viewer of /dz/<id>.dzi and a canvas over it on which the
 * overlays are drawn in level-0 pixel coordinates (tiles, tissue outline, top tiles), from /api/slide/<id>.json.
 * Switches, legend and scale bar (um) live beside the image. In a case view an IHC slide registered onto the H&E
 * (`registration.matrix_level0_px`: IHC level-0 px -> H&E level-0 px) is shown in the H&E's orientation and follows
 * through the matrix (centre mapped, zoom matched in um); other pairs follow by position relative to slide size.
 * ?selftest=1: the page checks itself, results on <html data-selftest-*>; &pan=X,Y: where it moves the first viewer.
 */
(function () {
  'use strict';
  var panels = [];
  var leader = null;
  var syncing = false;

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
  // Image level-0 px -> viewer element px, with the viewport's rotation and flip (OpenSeadragon mirrors the drawn
  // canvas about its vertical centre line, after rotating).
  function frame(panel) {
    var item = panel.viewer.world.getItemAt(0), vp = panel.viewer.viewport, w = panel.viewer.container.clientWidth;
    var el = function (x, y) {
      var p = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
      return vp.getFlip() ? {x: w - p.x, y: p.y} : p;
    };
    var o = el(0, 0), ex = el(1000, 0), ey = el(0, 1000);
    var a = (ex.x - o.x) / 1000, b = (ex.y - o.y) / 1000, c = (ey.x - o.x) / 1000, d = (ey.y - o.y) / 1000;
    return {s: Math.sqrt(a * a + b * b), pt: function (x, y) { return [o.x + a * x + c * y, o.y + b * x + d * y]; }};
  }

  function path(ctx, f, points) {
    ctx.beginPath();
    points.forEach(function (q, j) {
      var p = f.pt(q[0], q[1]);
      if (j) { ctx.lineTo(p[0], p[1]); } else { ctx.moveTo(p[0], p[1]); }
    });
    ctx.closePath();
  }

  function square(b) { return [[b[0], b[1]], [b[0] + b[2], b[1]], [b[0] + b[2], b[1] + b[3]], [b[0], b[1] + b[3]]]; }

  function drawTiles(ctx, f, data, fill, stroke) {
    var box = data.overlays.tiles.box;
    for (var i = 0; i < box.length; i++) {
      var colour = fill(i);
      if (!colour) { continue; }
      path(ctx, f, square(box[i]));
      ctx.fillStyle = colour; ctx.fill();
      if (stroke) { ctx.strokeStyle = stroke(i); ctx.stroke(); }
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
    } else if (key === 'region') {  // the registered tumour region: its tiles tinted, outlined
      ctx.lineWidth = 2;
      var inside = function (i) { return o.tiles.in_region[i] === 1 ? rgba(colours.region, 0.18) : null; };
      drawTiles(ctx, f, panel.data, inside, function () { return rgba(colours.region, 0.9); });
      ctx.lineWidth = 1;
    } else if (key === 'tissue') {
      ctx.strokeStyle = rgba(colours.tissue, 1);
      ctx.lineWidth = 2;
      o.tissue.forEach(function (ring) { path(ctx, f, ring); ctx.stroke(); });
      ctx.lineWidth = 1;
    } else if (key === 'top') {
      drawTop(ctx, f, o);
    }
  }

  function drawTop(ctx, f, o) {
    ctx.lineWidth = 3;
    ctx.font = 'bold 13px sans-serif';
    o.top.forEach(function (t) {
      var c = rgba(o.colours.classes[t.group] || [255, 140, 0], 1), size = Math.max(t.size, 6 / f.s);
      path(ctx, f, square([t.x, t.y, size, size]));
      ctx.strokeStyle = c;
      ctx.stroke();
      var p = f.pt(t.x + size / 2, t.y + size / 2);
      ctx.fillStyle = c; ctx.fillText(String(t.rank), p[0] - 4, p[1] + 5);
    });
    ctx.lineWidth = 1;
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
    viewState(panel);
  }

  // ---- legend and scale bar ------------------------------------------------------------------------------
  function legendItem(html, style, cls) {
    var item = document.createElement('div'), mark = document.createElement('span'), text = document.createElement('span');
    item.className = 'item';
    mark.className = cls;
    Object.keys(style).forEach(function (k) { mark.style[k] = style[k]; });
    text.textContent = html;
    item.append(mark, text);
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
      } else if (key === 'region') {
        var n = o.tiles.in_region.filter(function (v) { return v === 1; }).length;
        var tint = {background: rgba(colours.region, 0.25), borderColor: rgba(colours.region, 1)};
        box.appendChild(legendItem('tumour region (registered from H&E): ' + n + ' tiles', tint, 'swatch'));
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

  function apply(m, p) {
    return {x: m[0][0] * p.x + m[0][1] * p.y + m[0][2], y: m[1][0] * p.x + m[1][1] * p.y + m[1][2]};
  }

  function invert(m) {
    var a = m[0][0], b = m[0][1], c = m[0][2], d = m[1][0], e = m[1][1], f = m[1][2], det = a * e - b * d;
    return [[e / det, -b / det, (b * f - c * e) / det], [-d / det, a / det, (c * d - a * f) / det], [0, 0, 1]];
  }

  // A panel's usable registration onto an H&E slide (IHC level-0 px -> H&E level-0 px), or null.
  function registered(panel) {
    var r = panel.data && panel.data.registration;
    return r && r.status === 'ok' && r.matrix_level0_px ? r : null;
  }

  // The registration hook: a function mapping level-0 px of panel `from` to level-0 px of panel `to` (IHC -> H&E,
  // H&E -> IHC, or IHC -> H&E -> IHC for two slides registered onto the same H&E), or null: follow by position.
  function transform(from, to) {
    var rf = registered(from), rt = registered(to);
    var fwd = rf && function (p) { return apply(rf.matrix_level0_px, p); };
    var back = rt && function (p) { return apply(invert(rt.matrix_level0_px), p); };
    if (rf && rf.he_slide_id === to.id) { return fwd; }
    if (rt && rt.he_slide_id === from.id) { return back; }
    if (rf && rt && rf.he_slide_id === rt.he_slide_id) { return function (p) { return back(fwd(p)); }; }
    return null;
  }

  // In a case view, a registered IHC slide is shown in its H&E slide's orientation. The registration mirrors x
  // and then turns clockwise by rotation_deg; OpenSeadragon turns and then mirrors the drawn canvas, so with a
  // flip the viewport turns the other way (F R(-a) = R(a) F).
  function viewRotation(r) { return ((r.flip ? -r.rotation_deg : r.rotation_deg) % 360 + 360) % 360; }

  function orient(panel) {
    var r = registered(panel), he = r && panels.some(function (q) { return q.id === r.he_slide_id; });
    if (he && document.getElementById('sync')) {
      panel.viewer.viewport.setFlip(!!r.flip).setRotation(viewRotation(r), true);
    }
  }

  function centre(panel) {
    return panel.viewer.world.getItemAt(0).viewportToImageCoordinates(panel.viewer.viewport.getCenter(true));
  }

  function umPerScreenPx(panel) {
    var zoom = panel.viewer.world.getItemAt(0).viewportToImageZoom(panel.viewer.viewport.getZoom(true));
    return panel.data.slide.mpp / zoom;
  }

  // Centre `panel` on level-0 point `point` at `um` micrometres per screen pixel.
  function place(panel, point, um) {
    var item = panel.viewer.world.getItemAt(0), vp = panel.viewer.viewport;
    vp.zoomTo(item.imageToViewportZoom(panel.data.slide.mpp / um), null, true);
    vp.panTo(item.imageToViewportCoordinates(point.x, point.y), true);
  }

  function followRelative(p, rect) {
    var W = p.data.slide.width_px, H = p.data.slide.height_px, item = p.viewer.world.getItemAt(0);
    p.viewer.viewport.fitBounds(item.imageToViewportRectangle(rect.x * W, rect.y * H, rect.w * W, rect.h * H), true);
  }

  function follow(from) {
    var box = document.getElementById('sync');
    if (syncing || from !== leader || !box || !box.checked) { return; }
    syncing = true;
    var rect = normalised(from), c = centre(from), um = umPerScreenPx(from);
    panels.forEach(function (p) {
      if (p === from || !p.viewer || !p.viewer.world.getItemCount()) { return; }
      var map = transform(from, p);
      if (map) { place(p, map(c), um); } else { followRelative(p, rect); }
    });
    syncing = false;
  }

  // The view's state on the panel element (data-view-*), for people debugging and for the tests.
  function viewState(panel) {
    var c = centre(panel), vp = panel.viewer.viewport;
    var at = {centre: c.x.toFixed(1) + ',' + c.y.toFixed(1), rotation: String(+vp.getRotation().toFixed(4)),
              flip: String(!!vp.getFlip()), 'um-per-px': umPerScreenPx(panel).toFixed(4)};
    Object.keys(at).forEach(function (k) { panel.el.setAttribute('data-view-' + k, at[k]); });
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
        panel.viewer.addOnceHandler('open', function () { orient(panel); resolve(); });
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

  // Move the first viewer (to ?pan=X,Y at 2 level-0 px per screen px, else zoom 3x and pan a little); the others
  // follow. Records each viewer's centre, rotation, flip and um per screen px, and the worst offset of the
  // viewers that follow by relative position.
  function syncTest(shown, set) {
    var lead = shown[0], vp = lead.viewer.viewport, pan = /[?&]pan=([\d.]+),([\d.]+)/.exec(window.location.search);
    leader = lead;
    if (pan) { place(lead, {x: +pan[1], y: +pan[2]}, 2 * lead.data.slide.mpp); } else {
      vp.zoomBy(3, null, true).panBy(new OpenSeadragon.Point(0.05, 0.03), true);
    }
    follow(lead);
    var a = normalised(lead), worst = null, views = [];
    shown.forEach(function (q) {
      viewState(q);
      views.push([q.id, transform(lead, q) ? 'registered' : 'relative'].concat(['centre', 'rotation', 'flip',
        'um-per-px'].map(function (k) { return q.el.getAttribute('data-view-' + k); })).join(':'));
      if (q === lead || transform(lead, q)) { return; }
      var b = normalised(q);
      worst = Math.max(worst || 0, Math.abs(a.x + a.w / 2 - b.x - b.w / 2), Math.abs(a.y + a.h / 2 - b.y - b.h / 2));
    });
    set('sync-offset', worst === null ? 'none' : worst.toFixed(4));
    set('sync-zoomed', (a.w < 0.6).toString());
    set('sync-views', views.join(' '));
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
      if (shown.length > 1 && document.getElementById('sync')) { syncTest(shown, set); }
      set('done', 'yes');
    }).catch(function (e) { set('error', String(e)); });
  }

  function start() {
    var root = document.documentElement;
    if (!window.OpenSeadragon) { root.setAttribute('data-osd', 'missing'); return; }
    root.setAttribute('data-osd', OpenSeadragon.version.versionStr);
    var els = [].slice.call(document.querySelectorAll('section.panel[data-viewable="yes"]'));
    var all = Promise.all(els.map(setup));
    all.then(function () { if (panels[0] && panels[0].viewer) { follow(panels[0]); } });  // start in step
    if (/[?&]selftest=1\b/.test(window.location.search)) {
      all.then(selftest, function (e) { root.setAttribute('data-selftest-error', String(e)); });
    }
  }

  if (document.readyState === 'loading') { document.addEventListener('DOMContentLoaded', start); } else { start(); }
})();
