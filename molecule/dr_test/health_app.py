# -*- coding: utf-8 -*-
# Copyright: pgsafe contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in application for the DR test scenario: GET /health answers 200 when the database
it is pointed at (PGHOST, PGPORT, PGUSER, PGDATABASE, as the dr_test role sets them) holds users,
503 otherwise. ``--config FILE`` also requires that file (the restored configuration of a system test);
``--fail`` always answers 503 (an application that never becomes healthy)."""

import argparse
import http.server
import os
import subprocess

PSQL = os.path.join(os.environ.get("PG_BIN_DIR", "/usr/lib/postgresql/15/bin"), "psql")


class Health(http.server.BaseHTTPRequestHandler):
    fail = False
    config = None

    def do_GET(self):  # noqa: N802 -- the http.server API
        if self.path != "/health":
            self.send_response(404)
            self.end_headers()
            return
        users = subprocess.run([PSQL, "-X", "-At", "-c", "SELECT count(*) FROM public.users"],
                               capture_output=True, text=True, check=False).stdout.strip()
        healthy = not self.fail and users.isdigit() and int(users) > 0 and (
            self.config is None or os.path.isfile(self.config))
        body = ("ok: %s users in %s\n" % (users, os.environ.get("PGDATABASE")) if healthy else "unhealthy\n")
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format, *args):  # noqa: A002 -- the http.server API
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--config")
    args = parser.parse_args()
    Health.fail = args.fail
    Health.config = args.config
    http.server.HTTPServer(("127.0.0.1", args.port), Health).serve_forever()


if __name__ == "__main__":
    main()
