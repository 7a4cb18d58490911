"""An HTTP part whose database is away when it starts waits for it (said once)
instead of exiting, serves once it is back, and stops when told to meanwhile
(pms_common.serve)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.support import free_port, fresh_database, wait_for
from tests.tcp_switch import require_postgres, switched

REPO = Path(__file__).resolve().parents[1]
LOG_LINES = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}


class WebPart:
    """`python -m <service>` (analytics by default) on a free port, its JSON log lines kept."""

    def __init__(self, tmp_path, database_url, service="analytics", **settings):
        self.port = free_port()
        env = {
            **os.environ,
            f"{service.upper()}_PORT": str(self.port),
            "DATABASE_URL": database_url,
            "PMS_DATA_DIR": str(tmp_path),
            "WEB_CONCURRENCY": "1",
            **settings,
        }
        self.process = subprocess.Popen([sys.executable, "-m", service], cwd=REPO, env=env, **LOG_LINES)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"message": line.rstrip()})

    def said(self, message):
        return [line for line in self.lines if line.get("message") == message]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def test_a_stop_while_it_waits_for_its_database_ends_it(tmp_path):
    part = WebPart(tmp_path, f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    try:
        wait_for(
            lambda: part.said("waiting for a peer; retrying with backoff"), timeout=60, message="the wait"
        )
        time.sleep(3)
        assert part.process.poll() is None, part.lines
        assert len(part.said("waiting for a peer; retrying with backoff")) == 1
    finally:
        assert part.stop() == 0


def test_once_its_database_is_back_it_migrates_and_serves(tmp_path):
    require_postgres()
    with fresh_database("postgres", tmp_path, "web_start") as url, switched(url) as switch:
        switch.off()
        part = WebPart(tmp_path, switch.url_for(url))
        try:
            wait_for(
                lambda: part.said("waiting for a peer; retrying with backoff"), timeout=60, message="the wait"
            )
            switch.on()
            wait_for(
                lambda: (
                    requests.get(f"http://127.0.0.1:{part.port}/health/live", timeout=2).status_code == 200
                ),
                timeout=60,
                message="the part to serve",
            )
            [resumed] = part.said("peer back; resumed")
            assert resumed["activity"] == "analytics migrations"
        finally:
            assert part.stop() == 0
