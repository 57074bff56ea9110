"""The web console driven in headless Chromium against a live broker (issue 13, part 4).

One test walks the acceptance steps, each asserted: the overview lists the
topics and groups; a group's lag changes on the page (live refresh, no reload)
while a real consumer process commits; a message's headers are browsed and
decoded; a DLQ redrive is refused without the token, refused with a wrong one,
and works with the token printed at start.  Screenshots are taken on the way
(PNG; written to $MQLITE_UI_SCREENSHOTS too when set, e.g. ``docs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mqlite

HERE = Path(__file__).resolve().parent
STEP = 30.0  # seconds any one step may take on a loaded 2-core box

MS = int(STEP * 1000)


def _wait_file(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STEP
    while not path.exists():
        assert proc.poll() is None, f"the consumer process exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path.name} not reached in {STEP} s"
        time.sleep(0.02)  # polling a file the child writes: no ordering by sleeping


def _shot(page: Any, tmp: Path, name: str) -> None:
    out = tmp / f"{name}.png"
    page.screenshot(path=str(out), full_page=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dest = os.environ.get("MQLITE_UI_SCREENSHOTS")
    if dest:
        Path(dest, f"console-{name}.png").write_bytes(out.read_bytes())


def test_console_in_chromium(browser: Any, console: Any, populated: str,
                             tmp_path: Path) -> None:
    from playwright.sync_api import expect

    c = console(populated, "--allow-actions", "--refresh", "0.5")
    assert c.url.startswith("http://127.0.0.1:")
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # 1. The overview lists the topics and groups of the live broker.
    page.goto(c.url)
    for t in ("orders", "emails", "emails.dlq"):
        expect(page.locator(f'#topics tr[data-topic="{t}"]')).to_be_visible()
    expect(page.locator('#topics tr[data-topic="orders"] td').nth(2)).to_have_text("300")
    expect(page.locator('#groups tr[data-group="mailers"]')).to_contain_text("queue")
    expect(page.locator("#n-dead")).to_have_text("2")

    # 2. Lag changes on the page while a real consumer process runs (no reload).
    gates = tmp_path / "gates"
    gates.mkdir()
    proc = subprocess.Popen([sys.executable, str(HERE / "_ui_procs.py"), "consume", populated,
                             str(gates)])
    try:
        _wait_file(gates / "stage1", proc)
        page.goto(f"{c.url}groups/billing")
        expect(page.locator("#total-lag")).to_have_text("200", timeout=MS)
        expect(page.locator("#members")).to_contain_text(str(proc.pid))
        expect(page.locator("#members")).to_contain_text("alive")
        lag_cells = page.locator("#lag td.lag")
        expect(lag_cells).to_have_count(3)
        before = sum(int(x) for x in lag_cells.all_inner_texts())
        assert before == 200
        refreshed = int(page.evaluate("document.body.dataset.refreshed || '0'"))
        (gates / "go").touch()
        _wait_file(gates / "stage2", proc)
        # the page is not reloaded: the live block re-fetches itself
        expect(page.locator("#total-lag")).to_have_text("0", timeout=MS)
        assert int(page.evaluate("document.body.dataset.refreshed")) > refreshed
        expect(page.locator("#lag td.lag")).to_have_text(["0", "0", "0"])
        # the lag chart has drawn this group's series from the sampled history
        expect(page.locator('svg.chart polyline[data-name="billing (orders)"]')).to_have_count(
            1, timeout=MS)
        _shot(page, tmp_path, "group")
    finally:
        (gates / "stop").touch()
        proc.wait(timeout=STEP)
    assert proc.returncode == 0
    page.goto(c.url)
    # a locator, not wait_for_function: the console's CSP forbids eval, and Playwright's
    # polling of a string predicate evaluates it in the page (it failed when the chart was
    # not drawn at the first check)
    page.locator("svg.chart[data-chart=rates] polyline").first.wait_for(
        state="attached", timeout=MS)
    _shot(page, tmp_path, "overview")

    # 3. Browse a message by offset, open it, read its headers decoded.
    page.goto(f"{c.url}topics/orders")
    expect(page.locator("#partitions tbody tr")).to_have_count(3)
    page.select_option('select[name="by"]', "offset")
    page.select_option('select[name="partition"]', "1")
    page.fill('input[name="value"]', "10")
    page.fill('input[name="n"]', "5")
    page.click("#browse button")
    rows = page.locator("#messages tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("trace-id=trace-0031")
    _shot(page, tmp_path, "topic")
    page.locator("#messages a.msg").first.click()
    expect(page).to_have_url(f"{c.url}topics/orders/1/10")
    hdr = page.locator("#headers tbody tr")
    expect(hdr).to_have_count(3)
    expect(hdr.nth(0).locator(".hname")).to_have_text("trace-id")
    expect(hdr.nth(0).locator(".hvalue")).to_have_text("trace-0031")
    expect(hdr.nth(1).locator(".hvalue")).to_have_text("application/json")
    expect(hdr.nth(2).locator(".hvalue")).to_have_text("00 01 02 ff")  # binary: hex
    expect(page.locator("#value")).to_contain_text('"order": 31')
    _shot(page, tmp_path, "message")
    # by key: every row found has that key
    page.goto(f"{c.url}topics/orders?by=key&value=customer-3&n=10")
    expect(page.locator("#messages tbody tr")).to_have_count(10)
    for key in page.locator("#messages tbody tr td:nth-child(4)").all_inner_texts():
        assert key == "customer-3"

    # 4. The queue page: in flight with owner and delivery count, scheduled, DLQ depth.
    page.goto(f"{c.url}queues/emails/mailers")
    expect(page.locator("#q-inflight")).to_have_text("1")
    expect(page.locator("#q-scheduled")).to_have_text("1")
    expect(page.locator("#q-dead")).to_have_text("2")
    flight = page.locator("#pending tbody tr", has_text="in flight")
    expect(flight.locator("td.owner")).to_have_text(_held_owner(populated))
    expect(flight.locator("td.count")).to_have_text("1")
    expect(page.locator("#pending")).to_contain_text("timeout talking to smtp")
    _shot(page, tmp_path, "queue")

    # 5. Redrive the DLQ: refused without a token, refused with a wrong one, then done.
    page.goto(f"{c.url}dlq/emails.dlq")
    expect(page.locator("#letters tbody tr")).to_have_count(2)
    expect(page.locator("#letters")).to_contain_text("smtp rejected")
    expect(page.locator("#letters")).to_contain_text("x-dead-letter-reason")
    _shot(page, tmp_path, "dlq")
    form = page.locator("#redrive-form")
    form.locator('input[name="token"]').fill("")
    with page.expect_response(lambda r: "/actions/redrive" in r.url) as resp:
        form.locator("button").click()
    assert resp.value.status == 403
    expect(page.locator("#error")).to_contain_text("no action token")
    page.goto(f"{c.url}dlq/emails.dlq")
    form.locator('input[name="token"]').fill("x" * len(c.token))
    form.locator("button").click()
    expect(page.locator("#error")).to_contain_text("wrong action token")
    with mqlite.open(populated) as b:
        assert len(b.dead_letters("emails.dlq")) == 2  # nothing happened
        qs = b.queue_stats("emails", "mailers")
        assert qs is not None
        ready_before = qs.ready
    page.goto(f"{c.url}dlq/emails.dlq")
    form.locator('input[name="token"]').fill(c.token)
    form.locator("button").click()
    expect(page.locator("#notice")).to_have_text("redrove 2 message(s) from emails.dlq")
    expect(page.locator("#dlq-count")).to_have_text("0")
    with mqlite.open(populated) as b:
        assert b.dead_letters("emails.dlq") == []
        qs = b.queue_stats("emails", "mailers")
        assert qs is not None and qs.ready == ready_before + 2
    assert errors == [], errors


def _held_owner(path: str) -> str:
    with mqlite.open(path) as b:
        owners = {p["owner"] for p in b.queue_pending("emails", "mailers") if p["owner"]}
    assert len(owners) == 1
    return owners.pop()
