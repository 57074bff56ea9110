"""The console's guards over plain HTTP (no browser): default bind, read-only mode, the
token, cross-origin and foreign-Host refusals; plus its pure helpers."""

from __future__ import annotations

import http.client
import socket
import sys
from typing import Any
from urllib.parse import urlencode

import pytest

import mqlite

pytest.importorskip("starlette", reason="the console needs the [ui] extra: pip install -e "
                                        "'.[test]'")

from mqlite.cli import _parser
from mqlite.ui import ActionGuard, decode_bytes, new_token
from mqlite.ui.history import rates_between
from mqlite.ui.server import DEFAULT_HOST, bind_socket


def _request(port: int, method: str, path: str, body: dict[str, str] | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else urlencode(body)
        hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, r.read().decode(), {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            cols = ln.split()
            addr, p = cols[1].split(":")
            if int(p, 16) == port and cols[3] == "0A":
                found.add(addr)
    return found


def test_default_bind_is_loopback() -> None:
    args = _parser().parse_args(["ui", "some/dir"])
    assert args.addr == "127.0.0.1" == DEFAULT_HOST
    assert not args.allow_actions


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_readonly_console_refuses_actions_and_reports_bad_input(console: Any, populated: str) -> None:
    c = console(populated)
    assert c.token is None
    assert c.url.startswith("http://127.0.0.1:")
    assert "read-only" in "".join(c.lines)
    assert _listening_addresses(c.port) == {"0100007F"}  # 127.0.0.1 only
    status, page, hdrs = _request(c.port, "GET", "/dlq/emails.dlq")
    assert status == 200 and "redrive-form" not in page and "read-only" in page
    assert "default-src 'self'" in hdrs["content-security-policy"]
    origin = {"Origin": c.url.rstrip("/")}
    status, page, _ = _request(c.port, "POST", "/actions/redrive",
                               {"topic": "emails.dlq", "token": "a" * 32}, origin)
    assert status == 403 and "read-only" in page
    with mqlite.open(populated) as b:
        assert len(b.dead_letters("emails.dlq")) == 2
    # bad input becomes an error page, not a crash
    assert _request(c.port, "GET", "/topics/nope")[0] == 404
    status, page, _ = _request(c.port, "GET", "/topics/orders?by=offset&value=-1")
    assert status == 200 and "value must be from 0" in page
    status, page, _ = _request(c.port, "GET", "/topics/orders?by=time&value=yesterday")
    assert status == 200 and "not a time" in page
    assert _request(c.port, "GET", "/topics/orders/0/999999")[0] == 404
    assert _request(c.port, "GET", "/queues/orders/nobody")[0] == 404
    # D82: an unknown group, or a queue group, is not shown as an empty stream group
    status, page, _ = _request(c.port, "GET", "/groups/nobody")
    assert status == 404
    assert f"no group &#39;nobody&#39; on this broker; `mqlite groups {populated}` lists " \
           "them" in page
    status, page, _ = _request(c.port, "GET", "/groups/mailers")
    assert status == 404 and "is a queue group (of topic emails)" in page
    assert f"`mqlite queue {populated} emails mailers`" in page
    status, page, _ = _request(c.port, "GET", "/api/history?chart=lag")
    assert status == 200 and '"unit":"messages"' in page


def test_actions_need_token_and_same_origin(console: Any, populated: str) -> None:
    c = console(populated, "--allow-actions")
    assert c.token is not None and len(c.token) >= 32
    form = {"topic": "emails.dlq", "token": c.token, "back": "/dlq/emails.dlq"}
    same = {"Origin": c.url.rstrip("/")}
    # cross-origin, even with the right token
    status, page, _ = _request(c.port, "POST", "/actions/purge", form,
                               {"Origin": "http://evil.example"})
    assert status == 403 and "cross-origin" in page
    status, page, _ = _request(c.port, "POST", "/actions/purge", form,
                               {"Sec-Fetch-Site": "cross-site"})
    assert status == 403 and "cross-site" in page
    # no token / wrong token
    status, page, _ = _request(c.port, "POST", "/actions/purge", {**form, "token": ""}, same)
    assert status == 403 and "no action token" in page
    status, page, _ = _request(c.port, "POST", "/actions/purge",
                               {**form, "token": new_token()}, same)
    assert status == 403 and "wrong action token" in page
    # a foreign Host header (DNS rebinding) is refused for reads too
    status, _, _ = _request(c.port, "GET", "/", headers={"Host": "evil.example"})
    assert status == 400
    with mqlite.open(populated) as b:
        assert len(b.dead_letters("emails.dlq")) == 2
    # the token, same origin: purge runs and redirects back with the outcome
    status, _, hdrs = _request(c.port, "POST", "/actions/purge", form, same)
    assert status == 303 and hdrs["location"].startswith("/dlq/emails.dlq?msg=purged+2")
    # reset offsets (no live members) and a bad value, reported on the page
    status, _, hdrs = _request(c.port, "POST", "/actions/reset-offsets",
                               {"group": "audit", "topic": "orders", "to": "offset",
                                "value": "7", "token": c.token, "back": "/groups/audit"}, same)
    assert status == 303 and "msg=" in hdrs["location"]
    status, _, hdrs = _request(c.port, "POST", "/actions/reset-offsets",
                               {"group": "audit", "topic": "orders", "to": "offset",
                                "value": "x", "token": c.token, "back": "//evil"}, same)
    assert status == 303 and hdrs["location"].startswith("/?err=")
    status, _, hdrs = _request(c.port, "POST", "/actions/purge",
                               {**form, "back": "/\\evil.example"}, same)
    assert status == 303 and hdrs["location"].startswith("/?msg=purged+0")
    status, page, _ = _request(c.port, "POST", "/actions/purge",
                               {**form, "pad": "x" * 20_000}, same)
    assert status == 413 and "larger than" in page
    with mqlite.open(populated) as b:
        assert b.dead_letters("emails.dlq") == []
        assert b.committed_offsets("audit", "orders") == {0: 7, 1: 7, 2: 7}
    status, page, _ = _request(c.port, "GET", "/groups/audit")
    assert status == 200 and "reset-form" in page


def test_guard_unit() -> None:
    with pytest.raises(ValueError, match="16 characters"):
        ActionGuard("short")
    g = ActionGuard("t" * 32)
    ok = {"scheme": "http", "host": "127.0.0.1:1"}
    assert g.refusal(**ok, headers={"origin": "http://127.0.0.1:1"}, given="t" * 32) is None
    assert g.refusal(**ok, headers={}, given="t" * 32) is None  # curl: no Origin, token ok
    refused = g.refusal(**ok, headers={"referer": "http://x.example/a"}, given="t" * 32)
    assert refused is not None and "Referer" in refused
    refused = ActionGuard(None).refusal(**ok, headers={}, given="t" * 32)
    assert refused is not None and "read-only" in refused


def test_decode_bytes() -> None:
    assert decode_bytes(None)["kind"] == "null"
    assert decode_bytes(b"hello") == {"kind": "text", "text": "hello", "size": 5, "cut": False}
    assert decode_bytes(b'{"a":1}')["text"] == '{\n  "a": 1\n}'
    assert decode_bytes(b"\x00\xff")["text"] == "00 ff"
    cut = decode_bytes(b"a" * 10, limit=4)
    assert cut["cut"] and cut["text"] == "aaaa" and cut["size"] == 10


def test_rates_between() -> None:
    from mqlite.types import BrokerStats, PartitionStats

    def snap(ms: int, end: int) -> BrokerStats:
        return BrokerStats(taken_ms=ms, partitions=[PartitionStats(topic="t", partition=0,
                                                                   start_offset=0,
                                                                   end_offset=end, bytes=0)],
                           groups=[], queues=[], scheduled={}, dead_letters={})

    assert rates_between(None, snap(0, 5)).rate_in == {"t": 0.0}
    assert rates_between(snap(0, 5), snap(2000, 25)).rate_in == {"t": 10.0}
    assert rates_between(snap(0, 25), snap(1000, 3)).rate_in == {"t": 0.0}  # recreated


def test_bind_socket_errors() -> None:
    with pytest.raises(ValueError, match="TCP port"):
        bind_socket("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="IP address"):
        bind_socket("localhost", 0)
    s = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ValueError, match="cannot listen"):
            bind_socket("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()
    assert socket.AF_INET == s.family
