"""Alert sinks: where a fired or resolved alert is delivered (a webhook, with retries off the caller's thread)."""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, replace

from deploycheck.alerts import Alert

LOGGER = logging.getLogger("deploycheck.monitor")


class WebhookSink:
    """Posts each alert as JSON to `url` from a background thread, with a timeout and retries (exponential
    backoff), so `record` never waits on the network. Alerts beyond `max_queue` waiting are dropped and
    counted in `dropped` rather than blocking."""

    def __init__(self, url: str, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.5,
                 max_queue: int = 1000, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._deliver, name="deploycheck-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(replace(alert))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (within `timeout_s`), then stop the thread."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def _deliver(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            body = json.dumps(asdict(alert)).encode()
            for attempt in range(self.retries + 1):
                try:
                    request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
                    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                        response.read()
                    self.delivered += 1
                    break
                except (OSError, urllib.error.URLError) as exc:
                    if attempt == self.retries:
                        self.failed += 1
                        LOGGER.warning("webhook %s: alert %s not delivered after %d attempts (%s)", self.url,
                                       alert.type, attempt + 1, exc)
                    else:
                        time.sleep(self.backoff_s * 2**attempt)
