# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An HTTP proxy in front of the moto server that injects faults on the wire.

The engine talks real HTTP to ``proxy.url`` (as S3 ``endpoint_url`` and/or KMS
``kms_endpoint_url``); every request goes through to moto unless a rule matches it.
A rule matches on the method, the S3 operation or the KMS ``X-Amz-Target`` action,
and a substring of the path, and then does one of:

* ``error``: answer ``status`` with an S3 XML or KMS JSON error body (``code``) instead
  of forwarding, ``times`` times (``None``: always);
* ``stall``: read ``after_bytes`` of the request body, then stop reading and answer
  nothing until the rule is released or the proxy stops (a link that hangs mid-upload).

Each request is one connection (the proxy answers with ``Connection: close``), so a
stalled request never blocks the others. ``proxy.log`` lists ``(method, operation,
path, outcome)`` for every request, for assertions such as "retried exactly 3 times".
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import urllib.parse

S3_MULTIPART_QUERY = ("partNumber", "uploadId")


@dataclasses.dataclass
class Rule:
    """What to inject and on which requests."""

    action: str  # "error" or "stall"
    method: str | None = None  # "PUT", "DELETE", "POST", ...
    operation: str | None = None  # "UploadPart", "PutObject", "DeleteObject" or a KMS action ("GenerateDataKey")
    path_contains: str | None = None
    status: int = 500
    code: str = "InternalError"
    message: str = "injected by the test fault proxy"
    times: int | None = None  # None: every matching request
    skip: int = 0  # let this many matching requests through first
    after_bytes: int = 0  # stall: body bytes read before going silent
    matched: int = 0
    injected: int = 0
    released: threading.Event = dataclasses.field(default_factory=threading.Event)
    stalled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def release(self) -> None:
        self.released.set()


def _s3_operation(method: str, path: str, query: dict) -> str:
    if method == "PUT":
        return "UploadPart" if all(key in query for key in S3_MULTIPART_QUERY) else "PutObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in query else "Post"
    if method == "HEAD":
        return "HeadObject"
    if method == "GET":
        return "ListObjectsV2" if "list-type" in query else "GetObject"
    return method


class FaultProxy:
    """``with FaultProxy(moto_endpoint) as proxy: proxy.add(Rule(...))``."""

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.url = "http://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._thread.start()

    # --- control -------------------------------------------------------------------------
    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            for rule in self.rules:
                rule.release()
            self.rules = []

    def stop(self) -> None:
        self._stopping.set()
        self.clear()
        self._thread.join(timeout=5)
        self._listener.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, operation: str, outcome: str | None = None) -> int:
        with self._lock:
            return sum(1 for entry in self.log if entry[1] == operation and (outcome is None or entry[3] == outcome))

    # --- serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _address = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _match(self, method: str, operation: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.method and rule.method != method:
                    continue
                if rule.operation and rule.operation != operation:
                    continue
                if rule.path_contains and rule.path_contains not in urllib.parse.unquote(path):
                    continue
                rule.matched += 1
                if rule.matched <= rule.skip:
                    continue
                if rule.times is not None and rule.injected >= rule.times:
                    continue
                rule.injected += 1
                return rule
        return None

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(30)
        reader = client.makefile("rb")
        try:
            request_line = reader.readline(65537).decode("latin-1").rstrip("\r\n")
            if not request_line:
                return
            method, target, _version = request_line.split(" ", 2)
            headers: list[tuple[str, str]] = []
            while True:
                line = reader.readline(65537).decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                name, _colon, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            lookup = {name.lower(): value for name, value in headers}
            parsed = urllib.parse.urlsplit(target)
            query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
            kms_target = lookup.get("x-amz-target", "")
            operation = kms_target.split(".", 1)[1] if kms_target.startswith("TrentService.") else \
                _s3_operation(method, parsed.path, query)
            rule = self._match(method, operation, parsed.path)
            expects_continue = lookup.get("expect", "").lower() == "100-continue"
            if rule is not None and rule.action == "error":
                # Like S3: refuse at once; a client that asked for 100-continue then never sends the body.
                if not expects_continue:
                    self._read_body(reader, lookup)
                self._record(method, operation, parsed.path, "error %d" % rule.status)
                self._answer_error(client, rule, bool(kms_target))
                return
            if expects_continue:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if rule is not None and rule.action == "stall":
                self._record(method, operation, parsed.path, "stalled")
                self._stall(reader, lookup, rule)
                return
            body = self._read_body(reader, lookup)
            self._forward(client, method, target, headers, body)
            self._record(method, operation, parsed.path, "forwarded")
        except (OSError, ValueError):
            pass  # the client went away (it timed out, or was killed): nothing to answer
        finally:
            try:
                reader.close()
                client.close()
            except OSError:
                pass

    def _record(self, method: str, operation: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, operation, path, outcome))

    @staticmethod
    def _read_body(reader, lookup: dict) -> bytes:
        if "chunked" in lookup.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size = int(reader.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while reader.readline(65537).strip():
                        pass  # trailers
                    return b"".join(parts)
                parts.append(reader.read(size))
                reader.readline(3)
        length = int(lookup.get("content-length") or 0)
        return reader.read(length) if length else b""

    def _stall(self, reader, lookup: dict, rule: Rule) -> None:
        wanted = min(rule.after_bytes, int(lookup.get("content-length") or rule.after_bytes))
        if wanted:
            reader.read(wanted)
        rule.stalled.set()
        # Silent until released: the client sees a link that stopped mid-request.
        while not rule.released.wait(0.1) and not self._stopping.is_set():
            pass

    @staticmethod
    def _answer_error(client: socket.socket, rule: Rule, kms: bool) -> None:
        if kms:
            body = json.dumps({"__type": rule.code, "message": rule.message}).encode()
            content_type = "application/x-amz-json-1.1"
        else:
            body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message>"
                    "<RequestId>fault-proxy</RequestId></Error>" % (rule.code, rule.message)).encode()
            content_type = "application/xml"
        reason = http.client.responses.get(rule.status, "Error")
        client.sendall(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                        % (rule.status, reason, content_type, len(body))).encode("latin-1") + body)

    def _forward(self, client: socket.socket, method: str, target: str, headers: list, body: bytes) -> None:
        upstream = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            skipped = {"connection", "transfer-encoding", "content-length", "keep-alive", "expect"}
            sent = {name: value for name, value in headers if name.lower() not in skipped}
            sent["Content-Length"] = str(len(body))
            sent["Connection"] = "close"
            upstream.request(method, target, body=body if body or method in ("PUT", "POST") else None,
                             headers=sent)
            response = upstream.getresponse()
            payload = response.read()
            lines = ["HTTP/1.1 %d %s" % (response.status, response.reason)]
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                    lines.append("%s: %s" % (name, value))
            # A HEAD answer keeps the object's length; any other answer carries its body.
            length = response.getheader("Content-Length") if method == "HEAD" else str(len(payload))
            lines.append("Content-Length: %s" % (length or "0"))
            lines.append("Connection: close")
            client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD"
                                                                                  else payload))
        finally:
            upstream.close()
