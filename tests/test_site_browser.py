"""The rendered leaderboard in a real browser: headless Chromium, driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe`` (the DevTools protocol as NUL-separated JSON on file
descriptors 3 and 4), so the test needs no Python package, no port and no network. It clicks a column header
with real mouse events and checks that the rows are re-ordered, types into the filter, and opens an entry page.
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
    """Three entries whose A_bar order (the default) differs from their accuracy order."""
    from harness.publish.leaderboard import load_entries, submit
    from harness.publish.site import render_site

    docs = {
        "steady": synthetic_results(acc=0.6, amp=0.9, loop={"mix_ratio": 0.1}),
        "best": synthetic_results(acc=0.9, amp=1.3, loop={"mix_ratio": 0.2}),
        "pair": synthetic_results(acc=0.75, amp=1.1, classifiers=("lenet", "alexnet"), loop={"mix_ratio": 0.3}),
    }
    entries = tmp_path / "entries"
    for name, doc in docs.items():
        submit(write(tmp_path / "in" / f"{name}.json", doc), entries)
    index = render_site(load_entries(entries), tmp_path / "site")
    return index, docs


ROWS = "Array.from(document.querySelectorAll('#board tbody tr')).filter(r => !r.hidden)"


def test_sort_filter_and_open_an_entry_in_headless_chromium(browser, site):
    index, docs = site
    url = index.resolve().as_uri()
    browser.open(url)
    runs = f"{ROWS}.map(r => r.dataset.run)"
    accs = f"{ROWS}.map(r => Number(r.cells[7].dataset.value))"
    assert browser.eval("document.querySelector('#board thead th:nth-child(8)').dataset.key") == "acc"

    initial = browser.eval(runs)  # ranked by A_bar, lowest first
    assert initial[0] == docs["steady"]["run_id"] and initial[-1] == docs["best"]["run_id"] and len(initial) == 4

    browser.click("#board thead th[data-key='acc'] button")
    browser.wait_for("document.querySelector(\"th[data-key='acc']\").getAttribute('aria-sort') === 'descending'")
    by_acc = browser.eval(runs)
    assert by_acc != initial
    assert browser.eval(accs) == sorted(browser.eval(accs), reverse=True)  # best accuracy first
    assert by_acc[0] == docs["best"]["run_id"] and by_acc[-1] == docs["steady"]["run_id"]

    browser.click("#board thead th[data-key='acc'] button")  # again: reversed
    browser.wait_for("document.querySelector(\"th[data-key='acc']\").getAttribute('aria-sort') === 'ascending'")
    assert browser.eval(accs) == sorted(browser.eval(accs))
    assert browser.eval(runs)[0] == docs["steady"]["run_id"]

    browser.click("#board thead th[data-key='classifier'] button")  # text column: A to Z
    browser.wait_for("document.querySelector(\"th[data-key='classifier']\").getAttribute('aria-sort') === 'ascending'")
    assert browser.eval(f"{ROWS}.map(r => r.dataset.classifier)") == ["alexnet", "lenet", "lenet", "lenet"]

    browser.type("#filter", "alexnet")
    browser.wait_for(f"{ROWS}.length === 1")
    assert browser.eval(runs) == [docs["pair"]["run_id"]]
    assert browser.eval("document.getElementById('count').textContent") == "1 of 4 rows"

    target = docs["pair"]["run_id"]
    browser.click(f"#board tbody tr[data-run='{target}'] a")
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


def test_the_sort_and_filter_survive_a_reload(browser, site):
    """The state is kept in the URL hash, so the back button from an entry page returns to the same view."""
    index, docs = site
    browser.open(index.resolve().as_uri() + "#sort=acc&dir=descending&q=lenet")
    assert browser.eval("document.getElementById('filter').value") == "lenet"
    assert browser.eval("document.querySelector(\"th[data-key='acc']\").getAttribute('aria-sort')") == "descending"
    assert browser.eval(f"{ROWS}.map(r => r.dataset.run)") == [
        docs["best"]["run_id"], docs["pair"]["run_id"], docs["steady"]["run_id"]]
