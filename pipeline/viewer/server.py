"""``python -m pipeline view results/``: review a finished run in the browser, slides in deep zoom with the evidence.

A local, read-only web server (stdlib ``ThreadingHTTPServer``) bound to a loopback address:

* ``/`` -- the run's ``report.html`` with its links to the views shown (:func:`pipeline.viewer.pages.served_report`);
* ``/slide/<slide_id>``, ``/case/<case_id>`` -- a slide, or a case's H&E and IHC slides side by side, in
  OpenSeadragon viewers with the overlays, legend, scale bar and the calls with their reasons;
* ``/api/slide/<slide_id>.json`` -- pyramid facts (size, um/px, levels) and overlays (:mod:`pipeline.viewer.data`);
* ``/dz/<slide_id>.dzi`` and ``/dz/<slide_id>_files/<level>/<col>_<row>.jpeg`` -- deep-zoom descriptor and tiles
  (:mod:`pipeline.viewer.deepzoom`);
* ``/static/viewer.{js,css}`` (this package) and ``/osd/...`` (OpenSeadragon, installed by ``make osd``).

Safety: a slide is named by its id, looked up in the run's sample sheet; the URL path is matched as raw text
against these patterns (never decoded, never joined to a folder), so ``..``, ``%2e%2e``, absolute paths and unknown
ids are 404, malformed tile addresses 400; only GET and HEAD are answered (anything else: 405); there is no
directory listing; a request whose Host header is not this server's is refused (DNS rebinding); no response carries
a label or macro image or a slide property (tiles come from the pyramid levels only).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import threading
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).resolve().parent / "static"
OSD_VERSION = "6.1.1"  # the version `make osd` installs (npm registry); keep in step with the Makefile
OSD_DIR = ROOT / ".gl" / "osd" / "node_modules" / "openseadragon"
ID = r"(?P<id>[A-Za-z0-9_-]{1,64})"
ROUTES = (
    (re.compile(r"/(?:report\.html)?"), "report"),
    (re.compile(rf"/case/{ID}"), "case_page"),
    (re.compile(rf"/slide/{ID}"), "slide_page"),
    (re.compile(rf"/api/slide/{ID}\.json"), "slide_json"),
    (re.compile(rf"/dz/{ID}\.dzi"), "dzi"),
    (re.compile(rf"/dz/{ID}_files/(?P<level>[^/]{{1,16}})/(?P<name>[^/]{{1,40}})"), "tile"),
    (re.compile(r"/static/(?P<name>viewer\.(?:js|css))"), "static"),
    (re.compile(r"/osd/(?P<name>openseadragon\.min\.js|images/[a-z_]{1,40}\.png|LICENSE\.txt)"), "osd"),
)
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8", ".json": "application/json",
         ".dzi": "application/xml; charset=utf-8", ".jpeg": "image/jpeg"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
LOG_REQUESTS = 10_000  # requests remembered by the server (tests and the benchmark read them)


class HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str = ""):
        super().__init__(message or status.phrase)
        self.status = status


def osd_dir(option: str | None = None) -> Path | None:
    """OpenSeadragon's build folder (with openseadragon.min.js), or None when it is not installed."""
    base = Path(option) if option else OSD_DIR
    for build in (base / "build" / "openseadragon", base):
        if (build / "openseadragon.min.js").is_file():
            return build
    return None


class Handler(BaseHTTPRequestHandler):
    """Answers GET and HEAD from :data:`ROUTES`; every other method gets 405."""

    server: ViewerServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, keep-alive waits ~40 ms
    server_version = "slide-triage-viewer"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # POST, PUT, DELETE, OPTIONS, TRACE, PROPFIND...: read-only server
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", "text/plain; charset=utf-8",
                   head=False, extra={"Allow": "GET, HEAD"})

    def _answer(self, head: bool) -> None:
        try:
            if not self.server.host_ok(self.headers.get("Host", "")):
                raise HttpError(HTTPStatus.BAD_REQUEST, "unexpected Host header")
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            for pattern, name in ROUTES:
                match = pattern.fullmatch(path)
                if match:
                    body, ctype, extra = getattr(self.server.app, name)(**match.groupdict())
                    break
            else:
                raise HttpError(HTTPStatus.NOT_FOUND)
            status = HTTPStatus.OK
        except HttpError as exc:
            status, body, ctype, extra = exc.status, f"{exc}\n".encode(), "text/plain; charset=utf-8", {}
        except Exception:  # a bug must not take the server down or leak a traceback to the page
            log.exception("error answering %s", self.path[:200])
            status, body, ctype, extra = HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain", {}
        self._send(status, body, ctype, head, extra)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str, head: bool, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)), "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", **(extra or {})}
        if ctype.startswith("text/html"):
            headers["Content-Security-Policy"] = PAGE_CSP
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.server.record(self.command, self.path, int(status), ctype, len(body))

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s " + format, self.address_string(), *args)


class ViewerServer(ThreadingHTTPServer):
    """The HTTP server: the app that makes the answers, the hosts it accepts and a log of recent requests."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app):
        self.app = app
        self.requests: deque[dict] = deque(maxlen=LOG_REQUESTS)
        self._log_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        port = self.server_address[1]
        self.hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", address[0])}

    def host_ok(self, host: str) -> bool:
        return host in self.hosts

    def record(self, method: str, path: str, status: int, ctype: str, length: int) -> None:
        with self._log_lock:
            self.requests.append({"method": method, "path": path, "status": status, "type": ctype, "bytes": length})

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address (or ``localhost``); the viewer serves patient slides, so nothing else."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ConfigError(f"--host {host}: the viewer serves patient slides and binds to a loopback address only "
                      "(127.0.0.1 or ::1); to review from another machine use an SSH tunnel: "
                      "ssh -L 8765:127.0.0.1:8765 HOST")


class App:
    """The answers: one method per route, each returning (body, content type, extra headers) or raising HttpError."""

    def __init__(self, cohort, osd: Path | None):
        self.cohort = cohort
        self.osd_build = osd

    def _slide(self, slide_id: str) -> dict:
        row = self.cohort.slides.get(slide_id)
        if row is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such slide in this run's sample sheet")
        return row

    def _source(self, slide_id: str):
        from pipeline.errors import SlideError

        self._slide(slide_id)
        try:
            return self.cohort.source(slide_id)
        except SlideError as exc:
            raise HttpError(HTTPStatus.NOT_FOUND, f"slide {slide_id} cannot be shown: {exc}") from None

    def _panel(self, slide_id: str, case_view: bool = False) -> str:
        from pipeline.errors import SlideError
        from pipeline.viewer.data import registration
        from pipeline.viewer.pages import registration_line, slide_panel

        try:
            self.cohort.source(slide_id)
            problem = None
        except SlideError as exc:
            problem = str(exc)
        row = self.cohort.slides[slide_id]
        sync = registration_line(registration(self.cohort, slide_id)) if case_view and row["stain"] != "HE" else ""
        return slide_panel(slide_id, row, self.cohort.summary(slide_id), problem, sync)

    def report(self):
        from pipeline.viewer.pages import index_page, served_report

        page = self.cohort.results / "report.html"
        text = served_report(page.read_text(encoding="utf-8")) if page.is_file() else index_page(self.cohort.cases)
        return text.encode(), TYPES[".html"], {}

    def case_page(self, id: str):  # noqa: A002 - the route's group name
        from pipeline.viewer.pages import case_header, view_page

        if id not in self.cohort.cases:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such case in this run's sample sheet")
        slides = self.cohort.case_slides(id)
        page = view_page(f"Case {id}", case_header(id, self.cohort.case(id)), [self._panel(s, True) for s in slides],
                         self.osd_build is not None, sync=len(slides) > 1)
        return page.encode(), TYPES[".html"], {}

    def slide_page(self, id: str):  # noqa: A002
        from pipeline.outputs.report_html import esc
        from pipeline.viewer.pages import view_page

        row = self._slide(id)
        case = esc(row["case_id"])
        header = f'<h1>Slide {esc(id)} ({esc(row["stain"])}) of case <a href="/case/{case}">{case}</a></h1>'
        page = view_page(f"Slide {id}", header, [self._panel(id)], self.osd_build is not None, sync=False)
        return page.encode(), TYPES[".html"], {}

    def slide_json(self, id: str):  # noqa: A002
        from pipeline.viewer.data import slide_json

        self._slide(id)
        return json_bytes(slide_json(self.cohort, id)), TYPES[".json"], {}

    def dzi(self, id: str):  # noqa: A002
        return self._source(id).dzi().encode(), TYPES[".dzi"], {}

    def tile(self, id: str, level: str, name: str):  # noqa: A002
        from pipeline.viewer.deepzoom import BadTile, parse_tile_name

        try:
            address = parse_tile_name(level, name)
        except BadTile as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        source = self._source(id)
        try:
            data = source.tile(*address)
        except BadTile as exc:
            raise HttpError(HTTPStatus.NOT_FOUND, str(exc)) from None
        return data, TYPES[".jpeg"], {"Cache-Control": "private, max-age=3600"}

    def static(self, name: str):
        return (STATIC / name).read_bytes(), TYPES[Path(name).suffix], {}

    def osd(self, name: str):
        if self.osd_build is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "OpenSeadragon is not installed: run `make osd`")
        path = self.osd_build.parents[1] / name if name == "LICENSE.txt" else self.osd_build / name
        if not path.is_file():
            raise HttpError(HTTPStatus.NOT_FOUND)
        return path.read_bytes(), TYPES[path.suffix], {"Cache-Control": "private, max-age=86400"}


def make_server(results: str | Path, host: str = "127.0.0.1", port: int = 0, samples: str | None = None,
                markers: str | None = None, osd: str | None = None) -> ViewerServer:
    """A ready (not yet serving) viewer server for a results folder; port 0 picks a free port."""
    from pipeline.viewer.data import Cohort

    app = App(Cohort(Path(results), samples, markers), osd_dir(osd))
    return ViewerServer((check_loopback(host), port), app)


def serve_in_thread(server: ViewerServer) -> threading.Thread:
    """Serve in a daemon thread (tests, benchmark); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="viewer", daemon=True)
    thread.start()
    return thread


# ---- CLI ------------------------------------------------------------------------------------------------
def configure_parser(parser) -> None:
    parser.add_argument("results", help="the results folder of a finished run (with slides/ and config.yaml)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--samples", help="sample sheet of the run (default: the one results/config.yaml names)")
    parser.add_argument("--markers", help="marker knowledge base (default: the one results/config.yaml names)")
    parser.add_argument("--osd", help=f"OpenSeadragon package folder (default: {OSD_DIR.relative_to(ROOT)}, "
                        "installed by `make osd`)")


def run(args) -> None:
    server = make_server(args.results, args.host, args.port, args.samples, args.markers, args.osd)
    if server.app.osd_build is None:
        log.warning("OpenSeadragon %s not found: the pages load but show no slide; install it with `make osd` "
                    "(npm install --prefix .gl/osd openseadragon@%s)", OSD_VERSION, OSD_VERSION)
    print(f"Serving {len(server.app.cohort.slides)} slides of {Path(args.results)} at {server.url} "
          "(decision support, not a diagnosis); Ctrl-C stops.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def json_bytes(data) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
