"""The console's ASGI app (Starlette): pages, the chart API and the guarded actions.

Every page is rendered on the server from the public broker API
(``stats``, ``describe_topic``, ``describe_group``, ``queue_stats``,
``queue_pending``, ``read``, ``dead_letters``); nothing here joins a group or
writes, except the three actions (``redrive``, ``purge_dead_letters``,
``reset_offsets``), which :class:`~mqlite.ui.security.ActionGuard` lets through
only with actions on, from this console's own origin, with the per-start token.

Pages with changing numbers mark them ``<div id="live">``; ``console.js``
re-fetches the page every ``refresh_ms`` and swaps that block, and draws the
charts from ``GET /api/history``.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mqlite.groups.admin import missing_stream_group
from mqlite.queue.deadletters import DeadLetterFilter, dead_letter_filter
from mqlite.ui.history import History
from mqlite.ui.security import ActionGuard

__all__ = ["KEY_SCAN_LIMIT", "create_app", "decode_bytes"]

_HERE = Path(__file__).resolve().parent

#: Messages a browse by key reads at most (all partitions together) before it stops.
KEY_SCAN_LIMIT = 100_000
#: Messages one browse shows at most, and the default.
_MAX_SHOW, _DEFAULT_SHOW = 500, 20
#: Bytes of a value shown on the message page (the rest is cut, and says so).
_MAX_VALUE_SHOWN = 64 * 1024
#: Bytes an action's form may have (they hold a few short fields).
_MAX_FORM = 16 * 1024
#: Series drawn per chart (the largest by latest value).
_MAX_SERIES = 8

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def decode_bytes(v: bytes | None, limit: int = 4096) -> dict[str, Any]:
    """How the console shows a key, value or header value.

    Returns ``{"kind": "null" | "json" | "text" | "hex", "text": str, "size": int,
    "cut": bool}``: UTF-8 text when it decodes and is printable (pretty JSON
    when it parses as a JSON object or array), else a hex dump; at most
    ``limit`` bytes are shown.
    """
    if v is None:
        return {"kind": "null", "text": "null", "size": 0, "cut": False}
    size = len(v)
    cut = size > limit
    part = bytes(v[:limit])
    try:
        s = part.decode("utf-8")
    except UnicodeDecodeError:
        s = None
    if s is not None and all(c.isprintable() or c in "\n\r\t" for c in s):
        if not cut and s[:1] in ("{", "["):
            try:
                return {"kind": "json", "text": json.dumps(json.loads(s), indent=2,
                                                           ensure_ascii=False),
                        "size": size, "cut": False}
            except ValueError:
                pass
        return {"kind": "text", "text": s, "size": size, "cut": cut}
    return {"kind": "hex", "text": " ".join(f"{b:02x}" for b in part), "size": size, "cut": cut}


def _iso(ms: int | None) -> str:
    if ms is None or ms < 0:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).isoformat(timespec="milliseconds")


def _age(ms: int | None, now_ms: int | None = None) -> str:
    if ms is None or ms <= 0:
        return "-"
    s = max(0, (now_ms if now_ms is not None else time.time_ns() // 1_000_000) - ms) / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}"
    return f"{v:,}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{int(f)} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{n} B"  # pragma: no cover - the loop returns


def _parse_time_ms(text: str) -> int:
    """UNIX ms from digits, or ISO 8601 (UTC unless it names a zone)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r}; give ISO 8601 (2026-01-31T12:00:00, UTC "
                         "unless it names a zone) or UNIX milliseconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return int(when.timestamp() * 1000)


def _int_param(q: Any, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, got {raw!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {v}")
    return v


#: The dead-letter filters (query parameters of ``/dlq/T``, fields of its action forms),
#: the same as ``mqlite dlq``'s ``--reason`` ... ``--from-offset-max``.
_DLQ_FILTERS = ("reason", "from_topic", "from_partition", "from_offset_min", "from_offset_max")


def _dlq_filter(q: Any) -> tuple[DeadLetterFilter | None, dict[str, str]]:
    """The :class:`~mqlite.DeadLetterFilter` of a query or form (``None``: no filter),
    and the given values as text (to fill the filter form and the actions' fields).

    An empty field is a filter not given.  Raises ``ValueError`` naming the field
    (a number that is not an integer, a negative partition or offset, min > max).
    """
    given = {f: (q.get(f) or "").strip() for f in _DLQ_FILTERS}
    nums: dict[str, int | None] = {}
    for f in ("from_partition", "from_offset_min", "from_offset_max"):
        raw = given[f]
        try:
            nums[f] = int(raw) if raw else None
        except ValueError:
            raise ValueError(f"{f} must be a whole number (at least 0), got {raw!r}") from None
    where = dead_letter_filter(reason=given["reason"] or None,
                               from_topic=given["from_topic"] or None,
                               from_partition=nums["from_partition"],
                               from_offset_min=nums["from_offset_min"],
                               from_offset_max=nums["from_offset_max"])
    return where, {f: v for f, v in given.items() if v}


class _Console:
    """State shared by the handlers: the broker, templates, history and guard."""

    def __init__(self, broker: Any, guard: ActionGuard, history: History,
                 refresh_ms: int) -> None:
        self.b = broker
        self.guard = guard
        self.history = history
        self.refresh_ms = refresh_ms
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
                                      autoescape=True, undefined=jinja2.StrictUndefined)
        self.env.filters.update(iso=_iso, age=_age, num=_num, human_bytes=_bytes,
                                urlq=lambda s: quote(str(s), safe=""))

    def page(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(
            path=self.b.path, actions=self.guard.enabled, refresh_ms=self.refresh_ms,
            msg=request.query_params.get("msg"), err=request.query_params.get("err"),
            now_ms=time.time_ns() // 1_000_000, nav=name.split(".")[0], **ctx)
        return HTMLResponse(html, status_code=status)

    def stats(self) -> Any:
        """The sampler's newest snapshot while it is fresh (younger than two sampling
        cycles plus 1 s), else a new one: open pages refreshing every few seconds then
        cost no broker reads beyond the sampler's own."""
        st = self.history.snapshot()
        limit_ms = 2000 * self.history.period + 1000
        if st is None or time.time_ns() // 1_000_000 - st.taken_ms > limit_ms:
            st = self.b.stats()
        return st

    # -- pages -------------------------------------------------------------------------
    def overview(self, request: Request) -> HTMLResponse:
        st = self.stats()
        last = self.history.latest()
        topics: dict[str, dict[str, Any]] = {}
        for p in st.partitions:
            t = topics.setdefault(p.topic, {"name": p.topic, "partitions": 0, "messages": 0,
                                            "bytes": 0})
            t["partitions"] += 1
            t["messages"] += p.end_offset - p.start_offset
            t["bytes"] += p.bytes
        for t in topics.values():
            t["rate"] = None if last is None else last.rate_in.get(t["name"])
        groups = self._group_rows(st, last)
        return self.page(request, "overview.html", stats=st,
                         topics=sorted(topics.values(), key=lambda t: t["name"]),
                         groups=groups, rate_in=None if last is None else sum(
                             last.rate_in.values()),
                         rate_out=None if last is None else sum(last.rate_out.values()))

    def _group_rows(self, st: Any, last: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for g in st.groups:
            per: dict[str, int] = {}
            for x in g.lag:
                per[x.topic] = per.get(x.topic, 0) + x.lag
            for t in sorted(per) or [""]:
                key = f"{g.group} ({t})"
                rows.append({"group": g.group, "kind": "stream", "topic": t,
                             "members": g.members, "lag": per.get(t, 0),
                             "rate": None if last is None else last.rate_out.get(key),
                             "href": "/groups/" + quote(g.group, safe="")})
        for q in st.queues:
            key = f"{q.group} (queue {q.topic})"
            rows.append({"group": q.group, "kind": "queue", "topic": q.topic,
                         "members": q.consumers, "lag": q.ready + q.inflight + q.delayed,
                         "ready": q.ready, "inflight": q.inflight,
                         "dead_letters": q.dead_letters, "dlq": q.dead_letter_topic,
                         "rate": None if last is None else last.rate_out.get(key),
                         "href": f"/queues/{quote(q.topic, safe='')}/{quote(q.group, safe='')}"})
        return rows

    def topics(self, request: Request) -> HTMLResponse:
        rows = []
        for name in self.b.topics():
            d = self.b.describe_topic(name)
            rows.append({"name": name, "partitions": len(d.partitions), "messages": d.messages,
                         "bytes": d.bytes, "config": d.config,
                         "end": sum(p.end_offset for p in d.partitions)})
        return self.page(request, "topics.html", topics=rows)

    def topic(self, request: Request) -> HTMLResponse:
        name = request.path_params["topic"]
        d = self.b.describe_topic(name)
        q = request.query_params
        mode = q.get("by", "")
        browse: dict[str, Any] = {"by": mode, "partition": q.get("partition", ""),
                                  "value": q.get("value", ""), "n": q.get("n", "")}
        msgs: list[Any] = []
        note = None
        error = None
        if mode:
            try:
                msgs, note = self._browse(name, d, q)
            except ValueError as exc:
                error = str(exc)
        shown = [{"m": m, "key": decode_bytes(m.key, 80), "value": decode_bytes(m.value, 120),
                  "headers": [(k, decode_bytes(v, 80)) for k, v in m.headers or ()]}
                 for m in msgs]
        return self.page(request, "topic.html", topic=d, browse=browse, messages=shown,
                         note=note, error=error)

    def _browse(self, name: str, d: Any, q: Any) -> tuple[list[Any], str | None]:
        nparts = len(d.partitions)
        part = _int_param(q, "partition", None, 0, max(0, nparts - 1))
        n = _int_param(q, "n", _DEFAULT_SHOW, 1, _MAX_SHOW) or _DEFAULT_SHOW
        parts = list(range(nparts)) if part is None else [part]
        by, value = q.get("by"), q.get("value", "").strip()
        msgs: list[Any] = []
        note = None
        if by == "offset":
            off = _int_param(q, "value", 0, 0, 2**63 - 1) or 0
            for p in parts:
                info = d.partitions[p]
                msgs.extend(self.b.read(name, p, max(off, info.start_offset), n))
        elif by == "time":
            if not value:
                raise ValueError("give a time: ISO 8601 (2026-01-31T12:00:00) or UNIX ms")
            ms = _parse_time_ms(value)
            from mqlite import TopicPartition

            c = self.b.consumer(None)
            try:
                hits = c.offsets_for_times({TopicPartition(name, p): ms for p in parts})
            finally:
                c.close()
            for tp, hit in sorted(hits.items()):
                if hit is not None:
                    msgs.extend(self.b.read(name, tp.partition, hit.offset, n))
        elif by == "key":
            if not value:
                raise ValueError("give the key to look for (UTF-8 text)")
            key = value.encode()
            scanned = 0
            for p in parts:
                info = d.partitions[p]
                pos = info.start_offset
                while pos < info.end_offset and len(msgs) < n and scanned < KEY_SCAN_LIMIT:
                    chunk = self.b.read(name, p, pos, min(1000, KEY_SCAN_LIMIT - scanned))
                    if not chunk:
                        break
                    scanned += len(chunk)
                    msgs.extend(m for m in chunk if m.key == key)
                    pos = chunk[-1].offset + 1
            msgs = msgs[:n]
            if scanned >= KEY_SCAN_LIMIT:
                note = (f"stopped after scanning {KEY_SCAN_LIMIT:,} messages; narrow the "
                        "search to one partition")
            else:
                note = f"scanned {scanned:,} messages"
        else:
            raise ValueError("browse by 'offset', 'time' or 'key'")
        return msgs, note

    def message(self, request: Request) -> HTMLResponse:
        name = request.path_params["topic"]
        part = request.path_params["partition"]
        off = request.path_params["offset"]
        got = self.b.read(name, part, off, 1)
        if not got or got[0].offset != off:
            return self.page(request, "error.html", status=404,
                             error=f"{name}[{part}]@{off}: no such message (removed by "
                                   "retention, or not written yet)")
        m = got[0]
        return self.page(request, "message.html", m=m, key=decode_bytes(m.key, 4096),
                         value=decode_bytes(m.value, _MAX_VALUE_SHOWN),
                         headers=[(k, decode_bytes(v, 4096)) for k, v in m.headers or ()])

    def groups(self, request: Request) -> HTMLResponse:
        st = self.stats()
        return self.page(request, "groups.html", stream=st.groups, queues=st.queues)

    def group(self, request: Request) -> HTMLResponse:
        name = request.path_params["group"]
        d = self.b.describe_group(name)
        queue_topics: list[str] = []
        if not (d.members or d.partitions):
            queue_topics = [q.topic for q in self.stats().queues if q.group == name]
        why = missing_stream_group(name, self.b.path, d, self.b.groups(), queue_topics)
        if why is not None:
            return self.page(request, "error.html", status=404, error=why)
        topics = sorted({p.partition.topic for p in d.partitions})
        dlq_depth = self.stats().dead_letters if d.dead_letter_topics else {}
        return self.page(request, "group.html", g=d, topics=topics, dlq_depth=dlq_depth,
                         total_lag=sum(p.lag for p in d.partitions),
                         chart_keys=[f"{name} ({t})" for t in topics])

    def queue(self, request: Request) -> HTMLResponse:
        topic, group = request.path_params["topic"], request.path_params["group"]
        qs = self.b.queue_stats(topic, group)
        if qs is None:
            return self.page(request, "error.html", status=404,
                             error=f"topic {topic!r} has no queue group {group!r}")
        pending = self.b.queue_pending(topic, group, limit=200)
        now = time.time_ns() // 1_000_000
        for p in pending:
            p["state"] = ("in flight" if p["owner"] and p["visible_at_ms"] > now
                          else "waiting for retry" if p["visible_at_ms"] > now
                          else "visible again")
        return self.page(request, "queue.html", q=qs, pending=pending,
                         scheduled=self.stats().scheduled.get(topic, 0),
                         policy=self.b.queue_policy(topic, group),
                         chart_keys=[f"{group} (queue {topic})"])

    def queues(self, request: Request) -> HTMLResponse:
        st = self.stats()
        return self.page(request, "queues.html", queues=st.queues, scheduled=st.scheduled,
                         dead=st.dead_letters)

    def dlq(self, request: Request) -> HTMLResponse:
        topic = request.path_params["topic"]
        where, given = _dlq_filter(request.query_params)  # ValueError: 400 with the reason
        letters = self.b.dead_letters(topic, limit=200, where=where)
        rows = [{"d": dl, "headers": [(k, decode_bytes(v, 200)) for k, v in
                                      dl.message.headers or ()],
                 "value": decode_bytes(dl.message.value, 120)} for dl in letters]
        back = "/dlq/" + quote(topic, safe="") + ("?" + urlencode(given) if given else "")
        return self.page(request, "dlq.html", topic=topic, letters=rows,
                         shown_limit=200, filters=given, back=back)

    def api_history(self, request: Request) -> JSONResponse:
        chart = request.query_params.get("chart", "rates")
        only = request.query_params.getlist("series")
        samples = self.history.samples()
        series: dict[str, list[float | None]] = {}

        def values(s: Any) -> dict[str, float]:
            if chart == "lag":
                return {k: float(v) for k, v in s.lag.items()}
            out = {f"in: {k}": v for k, v in s.rate_in.items()}
            out.update({f"out: {k}": v for k, v in s.rate_out.items()})
            return out

        per = [values(s) for s in samples]
        names: set[str] = set()
        for v in per:
            names.update(v)
        if only:
            names = {n for n in names if any(n == o or n.endswith(": " + o) for o in only)}
        latest = per[-1] if per else {}
        keep = sorted(names, key=lambda n: (-latest.get(n, 0.0), n))[:_MAX_SERIES]
        for n in sorted(keep):
            series[n] = [v.get(n) for v in per]
        return JSONResponse({"chart": chart, "unit": "messages" if chart == "lag" else
                             "messages/s", "t": [s.taken_ms for s in samples],
                             "series": series, "interval_s": self.history.interval})

    # -- actions -----------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > _MAX_FORM:
                return self.page(request, "error.html", status=413,
                                 error=f"form larger than {_MAX_FORM} bytes refused")
        body = raw.decode("utf-8", "replace")
        form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in request.headers.items()}
        why = self.guard.refusal(scheme=request.url.scheme, host=headers.get("host", ""),
                                 headers=headers, given=form.get("token") or None)
        if why is not None:
            return self.page(request, "error.html", status=403, error=why)
        back = form.get("back", "/")
        if not back.startswith("/") or back.startswith("//") or "\\" in back:
            back = "/"
        what = request.path_params["what"]
        where = None
        if what in ("redrive", "purge"):
            try:
                where, _ = _dlq_filter(form)
            except (ValueError, TypeError) as exc:  # nothing done: say why, as the GET does
                return self.page(request, "error.html", status=400, error=f"{what}: {exc}")
        try:
            msg = await run_in_threadpool(self._act, what, form, where)
        except Exception as exc:
            from mqlite.errors import MqliteError

            if not isinstance(exc, MqliteError | ValueError | TypeError | LookupError):
                raise
            return RedirectResponse(_with(back, err=f"{what}: {exc}"), status_code=303)
        return RedirectResponse(_with(back, msg=msg), status_code=303)

    def _act(self, what: str, form: dict[str, str], where: DeadLetterFilter | None) -> str:
        matching = "" if where is None else f" matching {where!r}"
        if what == "redrive":
            topic = form.get("topic", "")
            limit = _int_param(form, "limit", None, 1, 10_000_000)
            n = self.b.redrive(topic, where=where, limit=limit)
            return f"redrove {n} message(s){matching} from {topic}"
        if what == "purge":
            topic = form.get("topic", "")
            n = self.b.purge_dead_letters(topic, where=where)
            return f"purged {n} dead letter(s){matching} from {topic}"
        if what == "reset-offsets":
            group, topic, to_kind = form.get("group", ""), form.get("topic", ""), form.get("to")
            to: Any
            if to_kind in ("earliest", "latest"):
                to = to_kind
            elif to_kind == "offset":
                to = _int_param(form, "value", None, 0, 2**63 - 1)
                if to is None:
                    raise ValueError("give the offset to reset to")
            elif to_kind == "datetime":
                to = _dt.datetime.fromtimestamp(_parse_time_ms(form.get("value", "")) / 1000,
                                                tz=_dt.UTC)
            else:
                raise ValueError("reset to 'earliest', 'latest', 'offset' or 'datetime'")
            new = self.b.reset_offsets(group, topic, to, force=form.get("force") == "on")
            parts = ", ".join(f"[{p}]={o}" for p, o in sorted(new.items()))
            return f"group {group}: offsets on {topic} reset to {parts}"
        raise LookupError(f"no action {what!r} (redrive, purge, reset-offsets)")


def _with(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def create_app(broker: Any, *, token: str | None = None, history: History | None = None,
               allowed_hosts: list[str] | None = None, refresh_ms: int = 2000) -> Starlette:
    """The console as an ASGI app over an open ``broker``.

    Parameters
    ----------
    broker
        An open :class:`mqlite.Broker`; the caller keeps it open while the app
        serves and closes it after.
    token
        The per-start action token (:func:`mqlite.ui.security.new_token`);
        ``None`` = read-only: every action is refused with 403.
    history
        The sampler the charts read (started by the caller); ``None`` = a new
        one, not started (charts stay empty until ``history.start()``).
    allowed_hosts
        ``Host`` header values accepted (DNS-rebinding guard); default
        ``127.0.0.1``, ``localhost`` and ``::1``.  ``["*"]`` accepts any
        (for a console bound to every interface).
    refresh_ms
        How often pages refresh their live numbers, 250 to 60,000 ms.

    Raises
    ------
    ValueError
        ``refresh_ms`` out of bounds, or a token shorter than 16 characters.
    """
    if not 250 <= refresh_ms <= 60_000:
        raise ValueError(f"refresh_ms is milliseconds, 250 to 60000, got {refresh_ms}")
    hist = history if history is not None else History(broker.stats)
    c = _Console(broker, ActionGuard(token), hist, refresh_ms)

    def sync(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await run_in_threadpool(fn, request)
            except Exception as exc:
                from mqlite.errors import MqliteError

                if not isinstance(exc, MqliteError | ValueError | TypeError):
                    raise
                code = 404 if type(exc).__name__.endswith("NotFoundError") else 400
                return c.page(request, "error.html", status=code, error=str(exc))
        return endpoint

    routes = [
        Route("/", sync(c.overview)),
        Route("/topics", sync(c.topics)),
        Route("/topics/{topic}", sync(c.topic)),
        Route("/topics/{topic}/{partition:int}/{offset:int}", sync(c.message)),
        Route("/groups", sync(c.groups)),
        Route("/groups/{group}", sync(c.group)),
        Route("/queues", sync(c.queues)),
        Route("/queues/{topic}/{group}", sync(c.queue)),
        Route("/dlq/{topic}", sync(c.dlq)),
        Route("/api/history", sync(c.api_history)),
        Route("/actions/{what}", c.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    hosts = allowed_hosts if allowed_hosts is not None else ["127.0.0.1", "localhost", "::1",
                                                             "[::1]"]
    app = Starlette(routes=routes, middleware=[
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(_SecurityHeaders)])
    app.state.console = c
    return app


class _SecurityHeaders:
    """Adds CSP, nosniff, no-referrer and no-store to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with(message: Any) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"content-security-policy", _CSP.encode()),
                         (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"),
                         (b"cache-control", b"no-store")]
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, send_with)
