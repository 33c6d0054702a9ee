"""A loopback webhook receiver for the console's browser tests, run as its own process.

``python -m tests.console._receiver LOG`` answers every POST with 204, appends
``{"path", "headers", "body"}`` as one JSON line to LOG, and prints its port on stdout.
It is the "remote service" of those tests (the trio receivers in tests/fakes need the test's
event loop, which the synchronous browser tests do not run).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class _Handler(BaseHTTPRequestHandler):
    log_path = ""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        record = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
        }
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(record) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the log file."""


def main() -> None:
    _Handler.log_path = sys.argv[1]
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
