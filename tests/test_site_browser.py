"""The rendered leaderboard in a real browser: headless Chromium, driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe`` (the DevTools protocol as NUL-separated JSON on file
descriptors 3 and 4), so the test needs no Python package, no port and no network. It checks the tracks (a
table and a chart each, ranks within a track), clicks a column header with real mouse events and checks that the
rows are re-ordered, types into the filter, opens an entry page, reads the intervals in the cells, and checks at
three window widths that no column is clipped.
Skipped, with the reason, where Debian's ``chromium`` is not installed (``.ci/run`` installs it where it can).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.test_leaderboard import synthetic_results, write

CHROMIUM = next((p for p in (os.environ.get("BENCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                             shutil.which("chromium-browser")) if p and Path(p).exists()), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (/usr/bin/chromium): `apt-get install chromium`")

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900", "--remote-debugging-pipe")


class Browser:
    """A minimal DevTools-protocol client over Chromium's pipe: commands, replies, and one page session."""

    def __init__(self, profile: Path, timeout: float = 60.0) -> None:
        self.timeout = timeout
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds_3_and_4() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]  # no clash
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile.parent / "chromium.log"
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"], preexec_fn=fds_3_and_4,
            pass_fds=(3, 4), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: bool = True) -> dict[str, Any]:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"no reply to {method} within {self.timeout} s; log: {self.log.read_text()[-2000:]}")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe; log: {self.log.read_text()[-2000:]}")
            self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        base = json.dumps(url.split("#")[0])
        self.wait_for(f"location.href.split('#')[0] === {base} && document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, condition: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.eval(f"!!({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {condition}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element."""
        x, y = self.eval(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            el.scrollIntoView({{block: "center", inline: "center"}});
            const r = el.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2];
        }})()""")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.send("Input.insertText", {"text": text})

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - make sure the process goes away whatever happened
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        b.send("Browser.getVersion", session=False)
    except (RuntimeError, TimeoutError) as exc:
        b.close()
        pytest.skip(f"{CHROMIUM} does not start here: {exc}")
    yield b
    b.close()


@pytest.fixture
def site(tmp_path) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Two tracks. Track 1 (three seeds, so intervals): steady, best and pair (two classifiers) differ only in
    the generator's options and the classifiers; their A_bar order (the default) differs from their accuracy
    order. Track 2: smoke, one seed (no intervals), the best accuracy of all, but another protocol."""
    from harness.publish.leaderboard import load_entries, submit
    from harness.publish.site import render_site

    seeds = (0, 1, 2)
    docs = {
        "steady": synthetic_results(acc=0.6, amp=0.9, seeds=seeds),
        "best": synthetic_results(acc=0.9, amp=1.3, seeds=seeds, generator={"name": "dcgan", "options": {"width": 16}}),
        "pair": synthetic_results(acc=0.75, amp=1.1, seeds=seeds, classifiers=("lenet", "alexnet"),
                                  generator={"name": "dcgan", "options": {"width": 12}}),
        "smoke": synthetic_results(acc=0.95, amp=0.8),
    }
    entries = tmp_path / "entries"
    for name, doc in docs.items():
        submit(write(tmp_path / "in" / f"{name}.json", doc), entries)
    index = render_site(load_entries(entries), tmp_path / "site")
    return index, docs


ROWS = "Array.from(document.querySelectorAll('#track-1 table.board tbody tr')).filter(r => !r.hidden)"
ALL_ROWS = "Array.from(document.querySelectorAll('table.board tbody tr')).filter(r => !r.hidden)"


def column(key: str) -> str:
    """The index (0-based) of column ``key`` in the track tables, as a JS expression."""
    return f"Array.from(document.querySelectorAll('#track-1 thead th')).findIndex(h => h.dataset.key === '{key}')"


def test_sort_filter_and_open_an_entry_in_headless_chromium(browser, site):
    index, docs = site
    url = index.resolve().as_uri()
    browser.open(url)
    runs = f"{ROWS}.map(r => r.dataset.run)"
    accs = f"{ROWS}.map(r => Number(r.cells[{column('acc')}].dataset.value))"
    ranks = f"{ROWS}.map(r => r.cells[{column('rank')}].textContent)"

    # two tracks, each with its own table and chart; the one-seed smoke run is not ranked with the others
    assert browser.eval("Array.from(document.querySelectorAll('section.track')).map(s => s.id)") == \
        ["track-1", "track-2"]
    assert browser.eval("document.querySelectorAll('#track-1 .charts svg g.series').length") == 4  # a line per row
    assert browser.eval(f"{ALL_ROWS}.length") == 5
    assert browser.eval("Array.from(document.querySelectorAll('#track-2 tbody tr')).map(r => r.dataset.run)") == \
        [docs["smoke"]["run_id"]]

    initial = browser.eval(runs)  # ranked by A_bar, lowest first, within track 1
    assert initial[0] == docs["steady"]["run_id"] and initial[-1] == docs["best"]["run_id"] and len(initial) == 4
    assert browser.eval(ranks) == ["1", "2", "3", "4"]

    browser.click("#track-1 thead th[data-key='acc'] button")
    browser.wait_for("document.querySelector(\"#track-1 th[data-key='acc']\").getAttribute('aria-sort') === 'descending'")
    by_acc = browser.eval(runs)
    assert by_acc != initial
    assert browser.eval(accs) == sorted(browser.eval(accs), reverse=True)  # best accuracy first
    assert by_acc[0] == docs["best"]["run_id"] and by_acc[-1] == docs["steady"]["run_id"]
    assert browser.eval(ranks) == ["1", "2", "3", "4"]  # ranks follow the sorted column
    # every track is sorted by the column clicked
    assert browser.eval("document.querySelector(\"#track-2 th[data-key='acc']\").getAttribute('aria-sort')") == \
        "descending"

    browser.click("#track-1 thead th[data-key='acc'] button")  # again: reversed
    browser.wait_for("document.querySelector(\"#track-1 th[data-key='acc']\").getAttribute('aria-sort') === 'ascending'")
    assert browser.eval(accs) == sorted(browser.eval(accs))
    assert browser.eval(runs)[0] == docs["steady"]["run_id"]

    browser.click("#track-1 thead th[data-key='classifier'] button")  # text column: A to Z
    browser.wait_for("document.querySelector(\"#track-1 th[data-key='classifier']\").getAttribute('aria-sort') === "
                     "'ascending'")
    assert browser.eval(f"{ROWS}.map(r => r.dataset.classifier)") == ["alexnet", "lenet", "lenet", "lenet"]

    browser.type("#filter", "alexnet")
    browser.wait_for(f"{ALL_ROWS}.length === 1")
    assert browser.eval(runs) == [docs["pair"]["run_id"]]
    assert browser.eval("document.getElementById('count').textContent") == "1 of 5 rows"
    assert browser.eval("document.getElementById('track-2').hidden") is True  # no row of it matches

    target = docs["pair"]["run_id"]
    browser.click(f"#track-1 tbody tr[data-run='{target}'] a")
    page = (index.parent / "entries" / f"{target}.html").resolve().as_uri()
    browser.wait_for(f"location.href === {json.dumps(page)} && document.readyState === 'complete'")
    assert browser.eval("document.querySelector('h1').textContent") == target
    assert browser.eval("document.querySelectorAll('#metrics svg').length") >= 4
    assert browser.eval("document.querySelectorAll('#worst-k svg').length") == 2  # one per classifier
    assert browser.eval("document.querySelectorAll('#amplification svg').length") == 2
    series = browser.eval("Array.from(document.querySelectorAll('#metrics svg:first-of-type g.series'))"
                          ".map(g => g.dataset.label)")
    assert series == ["lenet", "alexnet"]
    # charts have a point per generation; the page lays them out (non-zero size) without any network access
    assert browser.eval("document.querySelector('#metrics svg').getBoundingClientRect().width") > 100
    assert browser.eval("document.querySelectorAll('#metrics svg:first-of-type g.series')[0]"
                        ".querySelectorAll('circle').length") == 3
    assert browser.eval("document.getElementById('reproduce').textContent").count(
        f"bench run --config entries/{target}.spec.json") == 1


def test_cells_show_intervals_or_say_why_not(browser, site):
    index, docs = site
    browser.open(index.resolve().as_uri())
    cell = f"document.querySelector(\"#track-1 tr[data-run='{docs['best']['run_id']}'] td:nth-child(\" + " \
           f"({column('acc')} + 1) + \")\")"
    mean = browser.eval(f"{cell}.querySelector('.m').textContent")
    interval = browser.eval(f"{cell}.querySelector('.ci').textContent")
    low, high = (float(x) for x in interval.split("–"))
    assert low <= float(mean) <= high and 0.0 <= low < high <= 1.0  # three seeds: a 95% interval, in [0, 1]
    smoke = f"document.querySelector(\"#track-2 tr[data-run='{docs['smoke']['run_id']}']\")"
    notes = browser.eval(f"Array.from({smoke}.querySelectorAll('td.num .ci')).map(c => c.textContent)")
    assert notes and {n.replace("\u00a0", " ") for n in notes} == {"no interval (1 seed)"}
    verdicts = browser.eval("Array.from(document.querySelectorAll('td.verdict')).map(c => [c.textContent, "
                            "c.querySelector('[title]').title])")
    assert verdicts and all(v == ["—", "no control arm"] for v in verdicts)  # no control arm in these runs


NO_CLIPPING = """(() => {
    const out = [];
    for (const table of document.querySelectorAll('table.board')) {
        const box = table.parentElement;
        const style = getComputedStyle(box);
        // the table fits its container, or the container scrolls to show all of it
        if (table.scrollWidth > box.clientWidth + 1 && !['auto', 'scroll'].includes(style.overflowX))
            out.push(`${table.id}: ${table.scrollWidth} px in ${box.clientWidth} px that does not scroll`);
        if (box.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
            out.push(`${table.id}: its container runs off the page`);
        for (const cell of table.querySelectorAll('th, td')) {  // no cell's content spills out of it
            if (cell.scrollWidth > cell.clientWidth + 1)
                out.push(`${table.id} ${cell.dataset.key || cell.textContent.trim().slice(0, 30)}: ` +
                         `${cell.scrollWidth} > ${cell.clientWidth}`);
        }
    }
    return out;
})()"""


@pytest.mark.parametrize("width", [1400, 1024, 760])
def test_no_column_is_clipped(browser, site, width):
    index, _ = site
    browser.open(index.resolve().as_uri())
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    browser.wait_for(f"document.documentElement.clientWidth <= {width}")
    assert browser.eval(NO_CLIPPING) == []
    fits = browser.eval("Array.from(document.querySelectorAll('table.board')).every(t => "
                        "t.scrollWidth <= t.parentElement.clientWidth + 1)")
    if width >= 1400:
        assert fits  # on a desktop screen every column is in view, no scrolling needed


def test_the_sort_and_filter_survive_a_reload(browser, site):
    """The state is kept in the URL hash, so the back button from an entry page returns to the same view."""
    index, docs = site
    browser.open(index.resolve().as_uri() + "#sort=acc&dir=descending&q=lenet")
    assert browser.eval("document.getElementById('filter').value") == "lenet"
    assert browser.eval("document.querySelector(\"th[data-key='acc']\").getAttribute('aria-sort')") == "descending"
    assert browser.eval(f"{ROWS}.map(r => r.dataset.run)") == [
        docs["best"]["run_id"], docs["pair"]["run_id"], docs["steady"]["run_id"]]
