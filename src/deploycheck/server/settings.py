"""`ServeSettings`: everything `deploycheck serve` is told, typed, in one object that travels to uvicorn's worker
processes as JSON in one environment variable (uvicorn starts each worker's app by import name)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENVIRONMENT_VARIABLE = "DEPLOYCHECK_SERVE_SETTINGS"


@dataclass(frozen=True)
class ServeSettings:
    """`max_rows`: rows one request may carry (413 beyond); `max_body_mb`: request body size (413 beyond);
    `request_timeout_s`: time a connection has to send its whole request (head and body) before it is closed;
    `keep_alive_s`: how long an idle keep-alive connection is kept; `max_connections`: open connections beyond
    which the oldest one still waiting for its first request is closed to make room (so idle connections can
    never lock out a health check); `limit_concurrency`: requests in flight beyond which new ones get 503;
    `drain_s`: after SIGTERM, readiness reports 503 for this long while requests are still served, then the
    listener closes and in-flight work finishes; `threads`: intra-op threads of each model's runtime;
    `verify_key` / `trust_code`: see `deploycheck.exporting.load_artifact`; `learn_latency_requests`: the p95 of
    that many first successful requests becomes each monitor's latency reference when above the release's."""

    path: str
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    max_body_mb: float = 16.0
    max_rows: int = 4096
    baselines: str | None = None
    window_s: float = 60.0
    request_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 10_000
    limit_concurrency: int | None = None
    drain_s: float = 5.0
    threads: int = 1
    verify_key: str | None = None
    trust_code: bool = False
    learn_latency_requests: int = 1000

    def to_environment(self) -> None:
        os.environ[ENVIRONMENT_VARIABLE] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeSettings:
        return cls(**json.loads(os.environ[ENVIRONMENT_VARIABLE]))
