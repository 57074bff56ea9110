"""The console's dead-letter page with ``mqlite dlq``'s filters (D83), at the HTTP level:
the ASGI app called in-process (no server, no browser)."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import pytest

import mqlite

pytest.importorskip("starlette", reason="the console needs the [ui] extra: pip install -e "
                                        "'.[test]'")

from mqlite.ui import create_app, new_token

HOST = "127.0.0.1:8080"
SAME = {"origin": f"http://{HOST}"}


def _call(app: Any, method: str, target: str, form: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """One HTTP request through the ASGI app: (status, body text, headers)."""
    path, _, query = target.partition("?")
    body = b"" if form is None else urlencode(form).encode()
    hdrs = {"host": HOST, **({"content-type": "application/x-www-form-urlencoded"}
                             if form is not None else {}), **(headers or {})}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": unquote(path),
             "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080)}
    out: dict[str, Any] = {"status": 0, "headers": {}, "body": b""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in msg["headers"]}
        elif msg["type"] == "http.response.body":
            out["body"] += msg.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], out["body"].decode(), out["headers"]


@pytest.fixture
def letters(tmp_broker_dir: Path) -> Iterator[mqlite.Broker]:
    """12 dead letters of ``jobs`` (2 partitions x offsets 0-5) in ``jobs.dlq``: even
    original offsets "smtp timeout", odd ones "invalid amount"."""
    with mqlite.open(tmp_broker_dir, durability="none") as b:
        b.create_topic("jobs", 2)
        for p in (0, 1):
            b.send_batch("jobs", [b"p%d-%d" % (p, i) for i in range(6)], partition=p)
        q = b.queue("jobs", "w", dead_letter_topic="jobs.dlq")
        got = q.receive(max_messages=12, timeout=5.0)
        assert len(got) == 12
        assert q.dead_letter([d for d in got if d.offset % 2 == 0], reason="smtp timeout") == 6
        assert q.dead_letter([d for d in got if d.offset % 2], reason="invalid amount") == 6
        q.close()
        yield b


def _origins(page: str) -> list[str]:
    """``topic[partition]@offset`` of each letter row on a DLQ page."""
    import re

    return re.findall(r">(jobs\[\d\]@\d+)</a>", page)


def _left(b: mqlite.Broker) -> list[tuple[int | None, int | None]]:
    return sorted((dl.original_partition, dl.original_offset)
                  for dl in b.dead_letters("jobs.dlq"))


def test_dlq_page_lists_with_the_cli_filters(letters: mqlite.Broker) -> None:
    app = create_app(letters, token=new_token())
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq")
    assert status == 200 and len(_origins(page)) == 12 and 'id="dlq-filter"' in page
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq?reason=timeout&from_partition=1")
    assert status == 200
    assert sorted(_origins(page)) == ["jobs[1]@0", "jobs[1]@2", "jobs[1]@4"]
    assert 'name="reason" value="timeout"' in page  # the form shows the filter in force
    # the actions carry it (hidden fields), and come back to the filtered page
    assert page.count('<input type="hidden" name="from_partition" value="1">') == 2
    assert html.escape("/dlq/jobs.dlq?reason=timeout&from_partition=1") in page
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq?from_topic=jobs&from_offset_min=2"
                                        "&from_offset_max=3&reason=")  # empty = not given
    assert sorted(_origins(page)) == ["jobs[0]@2", "jobs[0]@3", "jobs[1]@2", "jobs[1]@3"]
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq?from_topic=other")
    assert status == 200 and _origins(page) == [] and "no dead letters match" in page


@pytest.mark.parametrize(("query", "says"), [
    ("from_partition=-1", "from_partition is a partition number, at least 0, got -1"),
    ("from_offset_min=x", "from_offset_min must be a whole number (at least 0), got &#39;x&#39;"),
    ("from_offset_min=5&from_offset_max=4", "nothing would match"),
])
def test_bad_filter_values_are_a_400_with_the_reason(letters: mqlite.Broker, query: str,
                                                     says: str) -> None:
    token = new_token()
    app = create_app(letters, token=token)
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq?" + query)
    assert status == 400 and says in page
    form = {"topic": "jobs.dlq", "token": token, "back": "/dlq/jobs.dlq",
            **dict(kv.split("=") for kv in query.split("&"))}
    for what in ("redrive", "purge"):
        status, page, _ = _call(app, "POST", f"/actions/{what}", form, SAME)
        assert status == 400 and says in page and what in page
    assert len(_left(letters)) == 12  # nothing done


def test_redrive_and_purge_act_on_the_matching_letters_only(letters: mqlite.Broker) -> None:
    token = new_token()
    app = create_app(letters, token=token)
    back = "/dlq/jobs.dlq?reason=timeout&from_partition=1"
    form = {"topic": "jobs.dlq", "token": token, "back": back, "reason": "timeout",
            "from_partition": "1", "limit": "2"}
    # the guard still comes first: a foreign Origin or no token is refused, nothing done
    status, page, _ = _call(app, "POST", "/actions/redrive", form,
                            {"origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in page
    status, page, _ = _call(app, "POST", "/actions/redrive", {**form, "token": ""}, SAME)
    assert status == 403 and "no action token" in page
    assert len(_left(letters)) == 12
    # filter first, then the limit: 2 of the 3 matching letters
    status, _, hdrs = _call(app, "POST", "/actions/redrive", form, SAME)
    assert status == 303 and hdrs["location"].startswith(back + "&msg=redrove+2+message")
    assert _left(letters) == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5),
                              (1, 1), (1, 3), (1, 4), (1, 5)]
    assert [m.value for m in letters.read("jobs", 1, 6, 10)] == [b"p1-0", b"p1-2"]
    # purge with a filter removes only its matches
    status, _, hdrs = _call(app, "POST", "/actions/purge",
                            {"topic": "jobs.dlq", "token": token, "back": "/dlq/jobs.dlq",
                             "from_partition": "0", "from_offset_min": "1",
                             "from_offset_max": "4"}, SAME)
    assert status == 303 and "msg=purged+4+dead" in hdrs["location"]
    assert _left(letters) == [(0, 0), (0, 5), (1, 1), (1, 3), (1, 4), (1, 5)]


def test_read_only_console_filters_but_refuses_actions(letters: mqlite.Broker) -> None:
    app = create_app(letters, token=None)
    status, page, _ = _call(app, "GET", "/dlq/jobs.dlq?reason=invalid")
    assert status == 200 and len(_origins(page)) == 6 and "redrive-form" not in page
    status, page, _ = _call(app, "POST", "/actions/purge",
                            {"topic": "jobs.dlq", "token": "a" * 32, "reason": "invalid"}, SAME)
    assert status == 403 and "read-only" in page
    assert len(_left(letters)) == 12


def test_groups_pages_show_where_a_stream_groups_failures_go(letters: mqlite.Broker) -> None:
    # D87: an App's stream subscriber records its dead_letter= topic in its group
    letters.set_group_dead_letter_topic("pay", "jobs", "jobs.dlq")
    app = create_app(letters, token=new_token())
    status, page, _ = _call(app, "GET", "/groups")
    assert status == 200
    stream = page[page.index('id="stream-groups"'):page.index('id="queue-groups"')]
    assert '<a href="/dlq/jobs.dlq">jobs.dlq</a>' in stream and "<td>12</td>" in stream
    queues = page[page.index('id="queue-groups"'):]
    assert '<a href="/dlq/jobs.dlq">jobs.dlq</a>' in queues  # queue groups name theirs too
    status, page, _ = _call(app, "GET", "/groups/pay")
    assert status == 200 and 'id="dead-letter-topics"' in page
    assert "<td>jobs</td><td><a href=\"/dlq/jobs.dlq\">jobs.dlq</a></td><td>12</td>" in page
