/*! __LIBRARY_NAME__ __LIBRARY_VERSION__ | Segment-compatible analytics.js for eventrouter */
/*
 * The library the loader snippet fetches from /analytics.js/v1/{writeKey}/analytics.min.js.
 * snippet/library.py minifies this file with rjsmin, which only strips comments and
 * whitespace: plain ES2017, no dependencies, short names inside the closure.
 *
 * Lifecycle: replace the snippet's queue (window.analytics, or the global named by the
 * script's data-global-segment-analytics-key attribute) with the real object, replay
 * the queued calls in order, then set `initialized` and run the ready callbacks.
 *
 * Load options, as Segment's analytics.load(writeKey, options) takes them:
 *   apiHost        where events go: an origin ("https://events.example.com") or
 *                  Segment's "host/v1" form; default: the origin this script came from
 *   flushAt        send when this many events are queued (default 20)
 *   flushInterval  ms after the first queued event to send anyway (default 1000)
 *   cookie         {domain, path, maxage (days), sameSite, secure} for the ajs_* cookies
 *   disableClientPersistence  true: no cookies, no localStorage (memory only)
 *
 * Delivery is at least once. Events wait in a queue that is also kept in localStorage
 * (ajs_eventrouter_queue, one entry per page), so a reload, a closed tab or an outage
 * does not lose them: the next page load of the site adopts the entries of pages that
 * are gone and sends them. A batch is removed only once the server answered it; a page
 * that goes away mid-request sends that batch again from the next load. The server
 * drops such a duplicate only with the message_id index configured (docs/api.md).
 */
(function (w, d) {
  "use strict";
  const NAME = "__LIBRARY_NAME__", VERSION = "__LIBRARY_VERSION__";
  const KB = 1024, MAX_EVENT = 32 * KB, MAX_BODY = 449 * KB, MAX_BEACON = 60 * KB;
  const MAX_ITEMS = 2500, MAX_QUEUE = 1000, STALE = 6e5;
  const QK = "ajs_eventrouter_queue", AK = "ajs_anonymous_id", UK = "ajs_user_id";
  // Calls the snippet queued that must take effect before the others (as analytics-next)
  const PRE = ["setAnonymousId", "on", "once", "off", "debug", "addSourceMiddleware",
    "addIntegrationMiddleware", "addDestinationMiddleware", "register"];
  // Options that are fields of the event; any other option key goes into its context
  const OWN = ["integrations", "anonymousId", "timestamp", "context"];
  const nav = navigator, loc = location, now = () => new Date().toISOString();
  const fn = x => typeof x == "function";

  const me = d.currentScript ||
    [].find.call(d.scripts, s => s.src.indexOf("/analytics.min.js") > 0);
  const G = (me && me.getAttribute("data-global-segment-analytics-key")) || "analytics";
  const stub = w[G];
  if (stub && stub.initialized) return; // the library is on the page twice

  let key, api = "", flushAt = 20, flushInterval = 1000, ck = {}, dbg = false, ok = false;
  let q = [], busy = null, timer = 0, tries = 0, mine = false, gone = 0;
  let ls = null, noCookie = false;
  const L = {}, mw = [], readies = [], mem = {};
  try { api = new URL(me.src).origin } catch (e) { /* inline: apiHost must say */ }
  const log = (...x) => dbg && console.warn("[analytics]", ...x);

  function uuid() {
    const c = w.crypto;
    if (c.randomUUID) return c.randomUUID(); // secure contexts only
    return "10000000-1000-4000-8000-100000000000".replace(/[018]/g,
      x => (x ^ (c.getRandomValues(new Uint8Array(1))[0] & (15 >> (x / 4)))).toString(16));
  }
  const tab = uuid(); // this page's entry in the persisted queue

  // -- storage: everything wrapped, since Safari private mode or blocked cookies throw --
  try {
    ls = w.localStorage;
    ls.setItem(QK + "_t", "1");
    ls.removeItem(QK + "_t");
  } catch (e) { ls = null }
  // Segment writes JSON (a string id in quotes); read that and bare values alike
  const parse = v => { try { return JSON.parse(v) } catch (e) { return v } };
  function lsGet(k) {
    try {
      const v = ls && ls.getItem(k);
      return v == null ? null : parse(v);
    } catch (e) { return null }
  }
  function lsSet(k, v) {
    try {
      if (!ls) return false;
      if (v == null) ls.removeItem(k); else ls.setItem(k, JSON.stringify(v));
      return true;
    } catch (e) { return false }
  }
  function cookie(k, v) { // read (v undefined), write, or remove (v null)
    if (noCookie) return null;
    try {
      if (v === undefined) {
        const m = ("; " + d.cookie).split("; " + k + "=")[1];
        return m == null ? null : parse(decodeURIComponent(m.split(";")[0]));
      }
      // host-only unless cookie.domain says otherwise; %22-quoted JSON, as analytics.js
      const age = v == null ? 0 : Math.round((ck.maxage || 365) * 864e2);
      d.cookie = k + "=" + (v == null ? "" : encodeURIComponent(JSON.stringify(v))) +
        "; path=" + (ck.path || "/") + "; max-age=" + age + "; SameSite=" + (ck.sameSite || "Lax") +
        (ck.domain ? "; domain=" + ck.domain : "") +
        (ck.secure || loc.protocol == "https:" ? "; Secure" : "");
    } catch (e) { return null }
  }
  // An identity value: the cookie (it also reaches the site's server), else localStorage
  function get(k) {
    let v = cookie(k);
    if (v == null) v = lsGet(k);
    if (v == null && !ls) v = mem[k];
    return v == null ? null : v;
  }
  function put(k, v, withCookie) { mem[k] = v; lsSet(k, v); withCookie && cookie(k, v) }

  const entity = (ik, tk) => ({
    id(v) { if (v !== undefined) put(ik, v, 1); return get(ik) },
    traits(v) { if (v !== undefined) put(tk, v); return get(tk) || {} },
  });
  const user = Object.assign(entity(UK, "ajs_user_traits"), {
    anonymousId(v) {
      if (v !== undefined) put(AK, v, 1);
      let a = get(AK);
      if (a == null) put(AK, a = uuid(), 1);
      return a;
    },
  });
  const group = entity("ajs_group_id", "ajs_group_properties");

  // -- the persisted queue: {pageId: {k: writeKey, t: last write, g: page gone, q: [events]}} --
  function readMap() { const m = lsGet(QK); return m && typeof m == "object" ? m : {} }
  function store() {
    if (!ls) return;
    const m = readMap();
    let items = q.slice(-MAX_QUEUE);
    for (;;) {
      if (items.length) m[tab] = { k: key, t: Date.now(), g: gone, q: items };
      else delete m[tab];
      mine = items.length > 0;
      if (lsSet(QK, Object.keys(m).length ? m : null) || !items.length) return;
      items = items.slice(items.length >> 1 || 1); // storage full: keep the newer half
    }
  }
  // Take the events of pages that are gone, or silent too long (crashed, killed)
  function adopt() {
    const m = readMap(), t = Date.now();
    let got = [];
    for (const id in m) {
      const x = m[id];
      if (id != tab && x && x.k == key && (x.g || t - x.t > STALE)) {
        got = got.concat(x.q || []);
        delete m[id];
      }
    }
    if (got.length) { lsSet(QK, m); q = got.concat(q).slice(-MAX_QUEUE); store() }
  }

  // -- events --------------------------------------------------------------------------
  function pageProps() {
    const c = d.querySelector("link[rel='canonical']");
    let url = loc.href.split("#")[0], path = loc.pathname;
    if (c) {
      try {
        const u = new URL(c.getAttribute("href"), loc.href);
        url = u.search ? u.href : u.href.split("#")[0] + loc.search;
        path = u.pathname;
      } catch (e) { /* a broken canonical link: the location is as good */ }
    }
    return { path, referrer: d.referrer, search: loc.search, title: d.title, url };
  }
  function context() {
    const p = pageProps(), s = screen, cm = {}, ua = nav.userAgentData;
    const c = {
      page: p, userAgent: nav.userAgent, locale: nav.language,
      library: { name: NAME, version: VERSION },
      screen: { width: s.width, height: s.height, density: w.devicePixelRatio },
    };
    try { c.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone } catch (e) { /* old */ }
    if (ua) c.userAgentData = { brands: ua.brands, mobile: ua.mobile, platform: ua.platform };
    new URLSearchParams(p.search).forEach((v, k) => {
      if (!k.indexOf("utm_")) cm[k == "utm_campaign" ? "name" : k.slice(4)] = v;
    });
    if (Object.keys(cm).length) c.campaign = cm;
    return c;
  }

  // Build an event, run the source middleware, queue it, then tell listeners
  function dispatch(type, f, o, cb, ev) {
    if (o.anonymousId) user.anonymousId(o.anonymousId); // persists, as in Segment
    let ts = now();
    try { if (o.timestamp) ts = new Date(o.timestamp).toISOString() } catch (e) { /* keep now */ }
    const c = context();
    for (const k in o) if (OWN.indexOf(k) < 0) c[k] = o[k];
    const e = Object.assign({ type, messageId: uuid(), anonymousId: user.anonymousId() }, f, {
      timestamp: ts, originalTimestamp: ts, context: Object.assign(c, o.context),
      integrations: o.integrations || {},
    });
    const uid = "userId" in f ? f.userId : user.id();
    if (uid == null) delete e.userId; else e.userId = uid;
    let i = 0;
    const next = p => {
      if (!p || !p.obj) return; // a middleware dropped it
      const m = mw[i++];
      if (!m) return done(p.obj);
      try {
        m({ payload: p, integrations: p.obj.integrations, next });
      } catch (x) { console.error(x) } // a broken middleware drops the event
    };
    const done = e => {
      enqueue(e);
      emit(type, ...ev);
      cb && setTimeout(cb, 0, e);
    };
    next({ obj: e, type: () => e.type });
  }

  const size = s => new Blob([s]).size;
  function enqueue(e) {
    let s;
    try { s = JSON.stringify(e) } catch (x) { return log("dropped, not JSON:", x, e) }
    if (size(s) > MAX_EVENT) return log("dropped, over 32 KB:", e);
    q.push(JSON.parse(s)); // a copy: later changes by the page do not reach it
    if (q.length > MAX_QUEUE) q.splice(0, q.length - MAX_QUEUE);
    store();
    schedule();
  }

  // -- delivery ------------------------------------------------------------------------
  const url = () => api + "/v1/batch";
  // Split events into request bodies of at most `max` bytes and MAX_ITEMS events. The
  // writeKey travels in the body and the type is text/plain: no CORS preflight.
  function chunks(list, max) {
    const out = [], body = p => '{"batch":[' + p.join(",") + '],"sentAt":"' + now() +
      '","writeKey":' + JSON.stringify(key) + "}";
    let items = [], parts = [], n = 0;
    for (const e of list) {
      const s = JSON.stringify(e), z = size(s) + 1;
      if (items.length && (n + z > max || items.length == MAX_ITEMS)) {
        out.push([items, body(parts)]);
        items = []; parts = []; n = 0;
      }
      items.push(e); parts.push(s); n += z;
    }
    if (items.length) out.push([items, body(parts)]);
    return out;
  }
  function drop(items) {
    const s = new Set(items);
    q = q.filter(e => !s.has(e));
    store();
  }
  function schedule() {
    if (busy || tries || !key) return; // a send or a retry is pending: it carries on
    if (q.length >= flushAt) flush();
    else if (q.length && !timer) timer = setTimeout(flush, flushInterval);
  }
  // Seconds or an HTTP date, in ms; 0 when absent or unreadable
  function retryAfter(r) {
    const v = r.headers.get("Retry-After");
    if (!v) return 0;
    return v.trim() >= 0 ? v * 1e3 : Math.max(0, Date.parse(v) - Date.now()) || 0;
  }
  async function flush() {
    clearTimeout(timer);
    timer = 0;
    if (busy || !key || !q.length) return;
    const [items, body] = chunks(q, MAX_BODY)[0], more = q.length > items.length;
    // a server that never answers must not hold the queue: give up after 30 s, retry
    const ac = new AbortController(), t = setTimeout(() => ac.abort(), 3e4);
    let wait = 0;
    busy = items;
    try {
      const r = await fetch(url(), {
        method: "POST", body, credentials: "omit", headers: { "Content-Type": "text/plain" },
        signal: ac.signal,
      });
      if (r.status == 429 || r.status >= 500) {
        wait = retryAfter(r) || -1;
        log("server busy, will retry:", r.status);
      } else {
        // 200, or a 4xx that sending again cannot fix: dropped, as Segment's SDKs do
        if (!r.ok) log("batch refused:", r.status);
        drop(items);
      }
    } catch (x) {
      wait = -1; // network error
      log("send failed, will retry:", x);
    }
    clearTimeout(t);
    busy = null;
    if (wait) {
      // exponential backoff with jitter: 0.5-1 s, doubling, at most 60 s
      if (wait < 0) wait = Math.min(6e4, 1e3 * 2 ** tries) * (0.5 + Math.random() / 2);
      tries++;
      timer = setTimeout(flush, wait);
      store(); // also says this page is alive, so no other page adopts its events
    } else {
      tries = 0;
      more ? flush() : schedule(); // what did not fit in this request has waited enough
    }
  }
  // The page is hidden or going away: hand the queue to the browser (sendBeacon, in
  // chunks under its 64 KB limit), unless the API failed last time: then the events
  // stay persisted for the next page load. Events the browser accepted are dropped from
  // the persisted queue even though delivery is not confirmed: one lost if the API fails
  // at that moment, rather than one duplicate for every page left with events queued.
  function hide() {
    if (key && !tries && nav.sendBeacon) {
      const rest = q.filter(e => !busy || busy.indexOf(e) < 0);
      for (const [items, body] of chunks(rest, MAX_BEACON)) {
        let sent = false;
        try { sent = nav.sendBeacon(url(), body) } catch (e) { /* refused */ }
        if (sent) drop(items);
      }
    }
    store();
  }
  // Shown again after the back-forward cache or a freeze: if another page adopted this
  // one's events meanwhile, they are that page's to send now
  function back() {
    gone = 0;
    if (mine && !readMap()[tab]) q = [];
    else store();
    schedule();
  }
  const leave = () => { gone = 1; hide() }; // pagehide comes before visibilitychange
  w.addEventListener("pagehide", leave);
  d.addEventListener("visibilitychange", () => d.visibilityState == "hidden" && hide());
  d.addEventListener("freeze", leave);
  d.addEventListener("resume", back);
  w.addEventListener("pageshow", e => e.persisted && back());
  w.addEventListener("online", () => tries && flush());

  // -- the API -------------------------------------------------------------------------
  function emit(n, ...x) {
    for (const f of (L[n] || []).slice()) {
      try { f(...x) } catch (e) { setTimeout(() => { throw e }) } // the page's error, not ours
    }
  }
  // Segment's argument shapes: `ids` leading ids (a string, number or null; an object
  // or a function ends them early), then the properties/traits and options objects,
  // and a callback wherever it is
  function args(a, ids) {
    a = [].slice.call(a);
    const out = [], obj = x => (x && typeof x == "object" ? x : {});
    while (out.length < ids) {
      const x = a[0];
      out.push(x == null || typeof x == "string" || typeof x == "number" ? a.shift() : undefined);
    }
    const cb = a.find(fn);
    a = a.filter(x => !fn(x));
    return out.concat(obj(a[0]), obj(a[1]), cb);
  }
  function pageCall(type, a) {
    let [c, n, p, o, cb] = args(a, 2);
    if (n == null) { n = c; c = null } // one string is the name
    const f = { properties: Object.assign(pageProps(), p) };
    if (n != null) f.name = n;
    if (c != null) f.category = c;
    dispatch(type, f, o, cb, [c, n, p, o]);
    return A;
  }
  // identify and group: the same id merges traits; another id starts afresh
  function who(type, ent, a) {
    let [id, t, o, cb] = args(a, 1);
    const cur = ent.id();
    if (id == null) id = cur;
    else if (cur != null && id != cur) {
      ent.traits(null);
      if (ent == user) user.anonymousId(null); // another user: a new anonymousId (Segment)
    }
    ent.id(id);
    ent.traits(t = Object.assign(ent.traits(), t));
    const f = { traits: t };
    f[type == "group" ? "groupId" : "userId"] = id;
    dispatch(type, f, o, cb, [id, t, o]);
    return A;
  }
  // trackLink/trackForm: track on click/submit; navigation needs no delay, since the
  // queue goes out by sendBeacon when the page goes away
  const bind = type => (els, ev, p) => {
    if (els) {
      for (const el of els.nodeType ? [els] : [].slice.call(els)) {
        el.addEventListener(type, () => {
          const v = x => (fn(x) ? x(el) : x);
          A.track(v(ev), v(p));
        });
      }
    }
    return A;
  };
  const noop = () => A;

  function load(k, o) {
    if (key || !k) return A; // loaded once; later calls are no-ops
    o = o || {};
    A._writeKey = key = k;
    A._loadOptions = o;
    const h = o.apiHost;
    if (h) api = (h.indexOf("//") < 0 ? "https://" + h : h).replace(/\/v1\/?$|\/$/, "");
    flushAt = Math.max(1, +o.flushAt || 20);
    flushInterval = +o.flushInterval >= 0 ? +o.flushInterval : 1000;
    ck = o.cookie || {};
    if (o.disableClientPersistence) { ls = null; noCookie = true }
    // refresh the cookies (a year from now; restored from localStorage if expired)
    user.anonymousId(user.anonymousId());
    if (user.id() != null) user.id(user.id());
    adopt();
    schedule();
    return A;
  }

  const A = {
    track() {
      const [ev, p, o, cb] = args(arguments, 1);
      dispatch("track", { event: ev, properties: p }, o, cb, [ev, p, o]);
      return A;
    },
    identify() { return who("identify", user, arguments) },
    page() { return pageCall("page", arguments) },
    screen() { return pageCall("screen", arguments) },
    group() { return arguments.length ? who("group", group, arguments) : group },
    alias() {
      const [to, from, o, , cb] = args(arguments, 2); // no properties: options come first
      const prev = from != null ? from : user.id() != null ? user.id() : user.anonymousId();
      dispatch("alias", { userId: to, previousId: prev }, o, cb, [to, prev, o]);
      return A;
    },
    reset() {
      user.id(null); user.traits(null); group.id(null); group.traits(null);
      user.anonymousId(null);
      user.anonymousId();
      emit("reset");
      return A;
    },
    ready(f) {
      if (fn(f)) ok ? setTimeout(f) : readies.push(f);
      return A;
    },
    user: () => user,
    setAnonymousId(id) { user.anonymousId(id); return A },
    debug(on) { dbg = on !== false; return A },
    on(n, f) { (L[n] = L[n] || []).push(f); return A },
    off(n, f) { L[n] = (L[n] || []).filter(g => g != f && g.f != f); return A },
    once(n, f) {
      const g = (...x) => { A.off(n, g); f(...x) };
      g.f = f;
      return A.on(n, g);
    },
    trackLink: bind("click"),
    trackClick: bind("click"),
    trackForm: bind("submit"),
    trackSubmit: bind("submit"),
    pageview(path) { return A.page(path ? { path } : {}) },
    // Segment's middleware signature: ({payload, integrations, next}) => next(payload)
    addSourceMiddleware(f) { fn(f) && mw.push(f); return A },
    // no destinations run in the page, so there is nothing for these to wrap
    addIntegrationMiddleware: noop,
    addDestinationMiddleware: noop,
    register: noop,
    load,
    initialize: noop, // Segment's snippet checks for it: a second snippet then does nothing
    VERSION,
  };

  w[G] = A;
  if (Array.isArray(stub)) {
    A.SNIPPET_VERSION = stub.SNIPPET_VERSION;
    load(stub._writeKey, stub._loadOptions);
    const calls = stub.filter(Array.isArray), pre = c => PRE.indexOf(c[0]) >= 0;
    for (const [m, ...a] of calls.filter(pre).concat(calls.filter(c => !pre(c)))) {
      try { fn(A[m]) && A[m](...a) } catch (e) { console.error(e) }
    }
  }
  A.initialized = ok = true;
  readies.forEach(f => setTimeout(f));
  emit("ready");
})(window, document);
