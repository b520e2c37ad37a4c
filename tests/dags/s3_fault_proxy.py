"""
An HTTP proxy in front of moto server's S3 that answers chosen requests with S3 errors.

Airflow's tasks talk to S3 through it (their AWS connection's endpoint), so a test can make S3
fail exactly where the commit protocol writes, and see what the tasks do about it. A rule fails the
first ``times`` requests of a method whose key matches a regular expression, either before the
request reaches S3 (``after_write=False``: nothing written) or after S3 has done it
(``after_write=True``: written, but the client is told it failed, as when a response is lost).
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>fault-proxy</RequestId></Error>"
)


@dataclass
class S3Fault:
    """
    Fail matching requests.

    :param method: the HTTP method (``PUT``, ``GET``...).
    :param key: a regular expression searched in ``<bucket>/<key>`` of the request path.
    :param times: how many matching requests fail.
    :param status: the HTTP status returned.
    :param code: the S3 error code returned.
    :param after_write: pass the request to S3 first, then answer with the error.
    :param for_seconds: instead of a count, fail every matching request for this long after the
        first one (an outage).
    """

    method: str
    key: str
    times: int = 0
    status: int = 503
    code: str = "SlowDown"
    after_write: bool = False
    for_seconds: float | None = None
    injected: list[str] = field(default_factory=list)
    first_at: float | None = None

    def matches(self, method: str, path: str) -> bool:
        if method != self.method or re.search(self.key, path) is None:
            return False
        if self.for_seconds is None:
            return len(self.injected) < self.times
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        return now - self.first_at < self.for_seconds


class S3FaultProxy:
    """
    The proxy server, on a free loopback port.

    :param upstream: moto server's URL (``http://127.0.0.1:<port>``).
    """

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults: list[S3Fault] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                fault = proxy.take(self.command, path)
                if fault is not None and not fault.after_write:
                    self._error(fault)
                    return
                status, headers, payload = proxy.forward(self.command, self.path, self.headers, body)
                if fault is not None:
                    self._error(fault)
                    return
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _error(self, fault: S3Fault) -> None:
                payload = ERROR_BODY.format(code=fault.code, message="injected by the test").encode()
                self.send_response(fault.status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's endpoint URL."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set_faults(self, faults: list[S3Fault]) -> None:
        """:param faults: the rules that replace the current ones."""
        with self.lock:
            self.faults = list(faults)

    def take(self, method: str, path: str) -> S3Fault | None:
        """Return the rule that fails this request (using up one of its ``times``), if any."""
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.injected.append(f"{method} {path}")
                    return fault
        return None

    def forward(
        self, method: str, target: str, headers: http.client.HTTPMessage, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request to S3 and return its status, headers and body."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            sent["Content-Length"] = str(len(body))
            conn.request(method, target, body=body, headers=sent)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()
