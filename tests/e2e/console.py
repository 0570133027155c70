#!/usr/bin/python3
"""console.py — the console (/ui) in headless Chromium, driven by selenium: called by
console.sh once ebd holds its events, as

    console.py URL TOKEN OUT_DIR

URL is ebd's base address, TOKEN its admin token; screenshots and Chromium's profile go to OUT_DIR.
It knows console.sh's traffic (the constants below).  Every check prints "ok: ..." or "FAIL: ...";
a check names the endpoint it reads in brackets.  The exit status is the number of failures
(at most 100); 2 also when Chromium or selenium cannot start at all."""

import json
import os
import sys
import time
import traceback

# console.sh's traffic on bus main
BUS = "main"
CREATED = ["ord-1", "ord-2", "ord-3", "ord-4"]     # source shop, type order.created -> to_ok -> ok
PAID = "pay-1"                                      # source billing, type order.paid -> to_flaky -> flaky (500, then 200)
FAILED = "bad-1"                                    # source shop, type order.failed -> to_bad -> bad (500 always) -> dead letter
HOSTILE = "x<b>bold</b><img src=x onerror=alert(1)>"  # type order.created: text, never markup
ALL_IDS = CREATED + [PAID, FAILED, HOSTILE]
WAIT = float(os.environ.get("E2E_UI_WAIT", "30"))

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    print("FAIL: python3 selenium is missing (%s): sh tools/deps.sh installs python3-selenium" % e)
    sys.exit(2)

url, token, out = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]
fails = 0


def ok(what):
    print("ok: " + what, flush=True)


def fail(what):
    global fails
    fails += 1
    print("FAIL: " + what, flush=True)


def find_binary(names):
    for n in names:
        for d in ("/usr/bin", "/usr/lib/chromium", "/usr/local/bin"):
            p = os.path.join(d, n)
            if os.access(p, os.X_OK):
                return p
    return None


def start_browser():
    chromium = find_binary(["chromium", "chromium-browser"])
    driver_bin = find_binary(["chromedriver"])
    if not chromium or not driver_bin:
        print("FAIL: %s is missing: sh tools/deps.sh installs chromium and chromium-driver"
              % ("chromium" if not chromium else "chromedriver"))
        sys.exit(2)
    o = webdriver.ChromeOptions()
    o.binary_location = chromium
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", "--no-first-run", "--window-size=1400,1000",
              "--user-data-dir=" + os.path.join(out, "chromium-profile")):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin, log_path=os.path.join(out, "chromedriver.log")),
                            options=o)


def wait(cond, what="", timeout=None):
    """Polls cond() until it returns something truthy (the page refreshes itself meanwhile:
    an element gone stale or not there yet only means "not yet"); returns that, or None once
    the timeout has passed."""
    end = time.time() + (timeout or WAIT)
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception:
            pass
        if time.time() > end or endpoint_missing():
            return None
        time.sleep(0.2)


def endpoint_missing():
    """Does the view say this ebd lacks the endpoint it reads (404 "no such endpoint", 405)?
    Then waiting longer cannot help."""
    return any("does not serve that endpoint" in t or ": 405 " in t for t in texts(".notice.error"))


def shot(name):
    try:
        d.save_screenshot(os.path.join(out, name + ".png"))
    except Exception as e:
        print("note: screenshot %s: %s" % (name, e))


def js(script, *args):
    """Runs script in the page (reading the page in one go: no element can go stale midway)."""
    try:
        return d.execute_script(script, *args)
    except Exception as e:
        return None


def texts(css):
    return js("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", css) or []


def cell(row_css, k):
    """The text of the k-th cell (0-based) of the first row matching row_css, or None."""
    return js("const r = document.querySelector(arguments[0]);"
              "return r && r.cells[arguments[1]] ? r.cells[arguments[1]].innerText : null", row_css, k)


def attr(css, name):
    """Attribute name of the first element matching css, or None."""
    return js("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null",
              css, name)


def attrs(css, *names):
    """The attributes names of every element matching css, as tuples (one name: values)."""
    v = js("return [...document.querySelectorAll(arguments[0])].map(e => arguments[1].map(n => e.getAttribute(n)))",
           css, list(names)) or []
    return [x[0] for x in v] if len(names) == 1 else [tuple(x) for x in v]


def click(css):
    """Clicks the first element matching css once it is there (retried while the page redraws)."""
    return wait(lambda: d.find_element(By.CSS_SELECTOR, css).click() or True)


def go(hash_):
    d.get(url + "/ui/" + hash_)


def view_error():
    return " ".join(texts(".view-error .notice"))


def section(name):
    """Runs one group of checks; an exception fails it and the others go on."""
    def run(fn):
        try:
            fn()
        except Exception:
            fail("%s: %s" % (name, traceback.format_exc().strip().splitlines()[-1]))
            shot("error-" + fn.__name__)
    return run


def as_int(s):
    try:
        return int((s or "").replace(",", "").strip())
    except ValueError:
        return None


os.makedirs(out, exist_ok=True)
try:
    d = start_browser()
except Exception as e:
    print("FAIL: Chromium did not start under selenium: %s" % e)
    sys.exit(2)


@section("static files")
def static_files():
    go("")
    if wait(lambda: d.execute_script("return typeof Chart === 'function' && !!document.querySelector('#nav a')"), "chart"):
        ok("[GET /ui] the console loads with Chart.js %s and its navigation" % d.execute_script("return Chart.version"))
    else:
        fail("[GET /ui] the console or Chart.js did not load")


@section("token")
def token_flow():
    d.execute_script("sessionStorage.clear()")
    go("#/buses")
    if wait(lambda: d.find_element(By.ID, "auth").is_displayed()):
        ok("[GET /v1/buses: 401] the console asks for the admin token")
    else:
        fail("[GET /v1/buses: 401] no token form: %s" % view_error())
        return
    shot("token")
    d.find_element(By.ID, "auth-token").send_keys("not-the-token-0123456789")
    d.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    msg = wait(lambda: d.find_element(By.ID, "auth-error").is_displayed() and d.find_element(By.ID, "auth-error").text)
    if msg and "403" in msg:
        ok("[GET /v1/buses: 403] a wrong token is shown as refused: %s" % msg)
    else:
        fail("[GET /v1/buses: 403] a wrong token is not shown as refused (%r)" % msg)
    shot("token-refused")
    d.find_element(By.ID, "auth-token").send_keys(token)
    d.find_element(By.CSS_SELECTOR, "#auth-form button").click()
    if wait(lambda: not d.find_element(By.ID, "auth").is_displayed() and d.find_elements(By.CSS_SELECTOR, "#buses tr[data-bus]")):
        ok("[GET /v1/buses] with the token the buses show; it is kept in sessionStorage")
    else:
        fail("[GET /v1/buses] with the token, no buses: %s" % view_error())


@section("buses")
def buses():
    go("#/buses")
    row = "#buses tr[data-bus='%s']" % BUS
    if not wait(lambda: as_int(cell(row, 1)) == len(ALL_IDS)):
        fail("[GET /v1/buses] bus %s with %d ingested: got %r %s" % (BUS, len(ALL_IDS), cell(row, 1), view_error()))
    else:
        ok("[GET /v1/buses] bus %s shows %d ingested, %s refused, rate %s" % (BUS, len(ALL_IDS), cell(row, 2), cell(row, 3)))
    total = wait(lambda: d.execute_script(
        "const c = Chart.getChart(document.getElementById('chart-per-minute'));"
        "if (!c) return 0; return c.data.datasets.reduce((s, x) => s + x.data.reduce((a, b) => a + b, 0), 0);")
        >= len(ALL_IDS) and d.execute_script(
        "const c = Chart.getChart(document.getElementById('chart-per-minute'));"
        "return [c.data.datasets.length, c.data.labels.length, c.data.datasets[0].data.reduce((a, b) => a + b, 0)]"))
    if total:
        ok("[GET /v1/buses per_minute] the chart canvas draws %d bus(es) over %d minutes, %d events" % tuple(total))
    else:
        fail("[GET /v1/buses per_minute] the chart has no data")
    shot("buses")


@section("rules")
def rules():
    go("#/rules")
    want = {"to_ok": len(CREATED) + 1, "to_flaky": 1, "to_bad": 1}
    got = wait(lambda: all(as_int(cell("#rules tr[data-rule='%s']" % r, 2)) == n for r, n in want.items())
               and {r: as_int(cell("#rules tr[data-rule='%s']" % r, 2)) for r in want})
    if got:
        ok("[GET /v1/rules] rule match counts %s" % got)
    else:
        fail("[GET /v1/rules] rule match counts: wanted %s, got %s %s" % (
            want, {r: cell("#rules tr[data-rule='%s']" % r, 2) for r in want}, view_error()))
    shot("rules")
    # the dry run: the form's own template (rule try_me: type == "order.created" on the bus)
    if not wait(lambda: "try_me" in (js("return document.getElementById('dr-text').value") or "")):
        fail("[POST /v1/buses/B/dry-run] the dry run form has no rules text")
        return
    click("#dr-go")
    got = wait(lambda: as_int(cell("#dr-rules tr[data-rule='try_me']", 1)) is not None and
               (cell("#dr-rules tr[data-rule='try_me']", 1), cell("#dr-rules tr[data-rule='try_me']", 2)))
    if got and as_int(got[0]) == len(CREATED) + 1 and "ord-1" in got[1]:
        ok("[POST /v1/buses/B/dry-run] try_me would match %s events: %s" % got)
    else:
        fail("[POST /v1/buses/B/dry-run] try_me: %r %s" % (got, " ".join(texts("#dr-out"))))
    shot("rules-dry-run")
    js("document.getElementById('dr-text').value = 'bus main\\nrule broken on main { match type == to }\\n'")
    click("#dr-go")
    msg = wait(lambda: " ".join(texts("#dr-out .notice.error pre")))
    if msg and "error" in msg:
        ok("[POST /v1/buses/B/dry-run] a rules text with errors shows the compiler's messages: %s" % msg.splitlines()[0])
    else:
        fail("[POST /v1/buses/B/dry-run] a broken rules text shows %r" % " ".join(texts("#dr-out")))


def event_ids():
    return attrs("#events tr[data-id]", "data-id")


@section("events")
def events():
    go("#/events/" + BUS)
    ids = wait(lambda: set(ALL_IDS) <= set(event_ids()) and event_ids())
    if ids:
        ok("[GET /v1/buses/B/events] the list holds the %d ids sent" % len(ALL_IDS))
    else:
        fail("[GET /v1/buses/B/events] ids shown %s, wanted %s %s" % (event_ids(), ALL_IDS, view_error()))
        return
    hostile = [t for t in texts("#events td") if "bold" in t]
    markup = js("return document.querySelectorAll('#events b, #events img, #events script').length")
    if hostile == [HOSTILE] and markup == 0:
        ok("an event's markup is shown as text, never run")
    else:
        fail("an event's markup: cells %r, elements %r" % (hostile, markup))
    shot("events")

    def search(**kw):
        for k in ("source", "type", "since", "limit"):
            f = d.find_element(By.ID, "q-" + k)
            f.clear()
            if kw.get(k):
                f.send_keys(kw[k])
        click("#q-go")

    search(type="order.paid")
    if wait(lambda: event_ids() == [PAID]):
        ok("[GET /v1/buses/B/events?type=] the search box's type finds %s alone" % PAID)
    else:
        fail("[GET /v1/buses/B/events?type=] type=order.paid shows %s" % event_ids())
    search(source="shop", type="order.failed")
    if wait(lambda: event_ids() == [FAILED]):
        ok("[GET /v1/buses/B/events?source=&type=] source and type find %s alone" % FAILED)
    else:
        fail("[GET /v1/buses/B/events?source=&type=] shows %s" % event_ids())
    search(source="billing", since="1h")
    if wait(lambda: event_ids() == [PAID]):
        ok("[GET /v1/buses/B/events?source=&since=] source=billing since=1h shows %s alone" % PAID)
    else:
        fail("[GET /v1/buses/B/events?source=&since=] shows %s" % event_ids())
    shot("events-search")
    search(limit="3")
    first = wait(lambda: len(event_ids()) == 3 and attr("#page-next", "disabled") is None and event_ids())
    if not first:
        fail("[GET /v1/buses/B/events?limit=3] a first page of 3 with a next page: %s" % event_ids())
        return
    click("#page-next")
    second = wait(lambda: "page 2" in " ".join(texts("#page-no")) and event_ids() != first and event_ids())
    if second and not set(first) & set(second):
        ok("[GET /v1/buses/B/events?after=] paging: %s then %s" % (first, second))
    else:
        fail("[GET /v1/buses/B/events?after=] paging: %s then %s" % (first, second))


def trace_of(event_id):
    """Opens the events list, clicks the event's row, and waits for its trace."""
    go("#/events/" + BUS)
    row = wait(lambda: js("const r = [...document.querySelectorAll('#events tr[data-id]')]"
                          ".find(r => r.getAttribute('data-id') === arguments[0]);"
                          "if (!r) return false; r.click(); return true", event_id))
    if not row:
        fail("[GET /v1/buses/B/events] no row for %s to follow" % event_id)
        return False
    if wait(lambda: texts("#trace-event-id") == [event_id] and texts("#timeline")):
        return True
    fail("[GET /v1/buses/B/offsets/N/trace] clicking %s shows no trace: %s %s" % (
        event_id, " ".join(texts("#trace .notice")), view_error()))
    return False


def attempts():
    return attrs("#timeline li.attempt", "data-target", "data-status")


def outcomes():
    return attrs("#trace-outcomes .outcome", "data-rule", "data-target", "data-state")


@section("trace")
def traces():
    if trace_of(PAID):
        got = wait(lambda: ("to_flaky", "flaky", "delivered") in outcomes() and
                   ("flaky", "500") in attempts() and ("flaky", "200") in attempts() and attempts())
        if got:
            ok("[trace] %s: attempts %s, then delivered" % (PAID, got))
        else:
            fail("[trace] %s: attempts %s, outcomes %s" % (PAID, attempts(), outcomes()))
        nm = attrs("#not-matched tr[data-rule]", "data-rule")
        why = cell("#not-matched tr[data-rule='to_ok']", 1)
        if "to_ok" in nm and why:
            ok("[trace?explain=1] why to_ok did not match: %s" % why)
        else:
            fail("[trace?explain=1] not_matched shows %s" % nm)
        shot("trace-" + PAID)
    if trace_of(FAILED):
        if wait(lambda: ("to_bad", "bad", "dead_lettered") in outcomes() and ("bad", "500") in attempts()):
            ok("[trace] %s: %d attempts (%s), then dead-lettered" % (FAILED, len(attempts()), ", ".join(s or "-" for _, s in attempts())))
        else:
            fail("[trace] %s: attempts %s, outcomes %s" % (FAILED, attempts(), outcomes()))
        shot("trace-" + FAILED)


@section("targets")
def targets():
    go("#/targets")
    # columns: 0 name, 1 kind, 2 health, 3 succeeded, 4 failed, 5 retried, 6 dead-lettered, 7 queued, 8 lag, 9 last error
    row = lambda t: "#targets tr[data-target='%s']" % t
    if wait(lambda: as_int(cell(row("ok"), 3)) == len(CREATED) + 1 and cell(row("ok"), 2) == "ok"):
        ok("[GET /v1/targets] ok: %s succeeded, healthy" % cell(row("ok"), 3))
    else:
        fail("[GET /v1/targets] ok: succeeded %r health %r %s" % (cell(row("ok"), 3), cell(row("ok"), 2), view_error()))
    if wait(lambda: as_int(cell(row("flaky"), 3)) == 1 and (as_int(cell(row("flaky"), 4)) or 0) >= 1):
        ok("[GET /v1/targets] flaky: 1 succeeded after %s failed" % cell(row("flaky"), 4))
    else:
        fail("[GET /v1/targets] flaky: succeeded %r failed %r" % (cell(row("flaky"), 3), cell(row("flaky"), 4)))
    if wait(lambda: as_int(cell(row("bad"), 6)) == 1 and cell(row("bad"), 9)):
        ok("[GET /v1/targets] bad: 1 dead-lettered, last error %r" % cell(row("bad"), 9).splitlines()[0])
    else:
        fail("[GET /v1/targets] bad: dead-lettered %r last error %r" % (cell(row("bad"), 6), cell(row("bad"), 9)))
    if click(row("bad") + " details summary"):
        samples = wait(lambda: [t for t in texts(row("bad") + " details[open] li")])
        if samples and all(s.strip() for s in samples):
            ok("[GET /v1/targets errors] bad: %d error sample(s), e.g. %r" % (len(samples), samples[0]))
        else:
            fail("[GET /v1/targets errors] bad: empty error samples")
    else:
        fail("[GET /v1/targets errors] bad: no error samples")
    shot("targets")


@section("schemas")
def schemas():
    go("#/schemas")
    row = "#schemas tr[data-source='shop'][data-type='order.created']"
    if not wait(lambda: texts(row)):
        fail("[GET /v1/schemas] no schema for (shop, order.created): %s" % view_error())
        return
    click(row + " summary")
    text = wait(lambda: "".join(texts(row + " details[open] pre")))
    text = text or ""
    try:
        schema = json.loads(text)
    except ValueError:
        schema = None
    if isinstance(schema, dict) and "order" in text and ("properties" in text or "type" in schema):
        ok("[GET /v1/schemas] (shop, order.created) version %s over %s events, its JSON Schema shown"
           % (cell(row, 3), cell(row, 4)))
    else:
        fail("[GET /v1/schemas] the schema shown: %r" % text[:200])
    shot("schemas")
    d.find_element(By.ID, "s-filter").send_keys("billing")
    if wait(lambda: set(attrs("#schemas tr[data-source]", "data-source")) == {"billing"}):
        ok("[GET /v1/schemas] the filter keeps billing's schemas alone")
    else:
        fail("[GET /v1/schemas] the filter: %s" % texts("#schemas tr[data-source]"))


@section("replays")
def replays():
    go("#/replays")
    if not wait(lambda: texts("#replays, [data-view=replays] .notice.info")):
        fail("[GET /v1/buses/B/replays] the replays page shows no list: %s" % view_error())
        return
    ok("[GET /v1/buses/B/replays] the replays page lists replays")
    wait(lambda: texts("select#r-bus"))
    for k, v in (("r-name", "ui-replay"), ("r-since", "1h"), ("r-rule", "to_ok")):
        f = d.find_element(By.ID, k)
        f.clear()
        f.send_keys(v)
    click("#r-start")
    row = "#replays tr[data-replay='ui-replay']"
    state = lambda: attr(row, "data-state")
    if not wait(state):
        fail("[POST /v1/buses/B/replays] the form started no replay: %s" % " ".join(texts("#replay-msg")))
        return
    ok("[POST /v1/buses/B/replays] the form started ui-replay (%s)" % state())
    if state() == "running":
        shot("replays-running")
    done = wait(lambda: state() == "done" and attr(row + " .progress", "data-pct"), "done", WAIT * 2)
    if done == "100":
        ok("[GET /v1/buses/B/replays] ui-replay done, progress 100%%, %s delivered" % cell(row, 8))
    else:
        fail("[GET /v1/buses/B/replays] ui-replay: state %s, progress %s" % (state(), attr(row + " .progress", "data-pct")))
    # A second one at 1 event a second (the replay's "rate" cap), cancelled from its button while
    # it runs (should it end before the page shows it running, that is said).
    for k, v in (("r-name", "ui-cancel"), ("r-rule", ""), ("r-rate", "1")):
        f = d.find_element(By.ID, k)
        f.clear()
        f.send_keys(v)
    click("#r-start")
    row = "#replays tr[data-replay='ui-cancel']"
    state = lambda: attr(row, "data-state")
    btn = wait(lambda: js("const b = document.querySelector(arguments[0]); if (b) b.click(); return !!b",
                          row + " button.cancel") or (state() not in (None, "running") and "ended"))
    if btn == "ended":
        print("note: ui-cancel was %s before it could be cancelled" % state())
    elif btn:
        if wait(lambda: state() == "cancelled"):
            ok("[DELETE /v1/buses/B/replays/N] the cancel button: ui-cancel is cancelled, at %s%%"
               % attr(row + " .progress", "data-pct"))
        elif state() == "done":
            print("note: ui-cancel ended before its cancel came: %s" % " ".join(texts("#replay-msg")))
        else:
            fail("[DELETE /v1/buses/B/replays/N] after cancel: %s" % state())
    else:
        fail("[POST /v1/buses/B/replays] the second replay did not show")
    shot("replays")


@section("browser log")
def browser_log():
    bad = [m["message"] for m in d.get_log("browser")
           if "Content Security Policy" in m["message"] or "Uncaught" in m["message"]]
    if bad:
        fail("the browser's console: %s" % bad[:3])
    else:
        ok("no script error and no Content-Security-Policy violation in the browser's console")


d.quit()
print("%d check(s) failed" % fails if fails else "all console checks passed")
sys.exit(min(fails, 100))
