"""`ServeSettings`: everything `deploycheck serve` is told, typed, in one object that travels to uvicorn's worker
processes as JSON in one environment variable (uvicorn starts each worker's app by import name)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, fields

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
    that many first successful requests becomes each monitor's latency reference when above the release's;
    `max_sequences`: sequences a generative model generates at once (429 beyond); `max_new_tokens`: the most
    tokens one generate request may ask for."""

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
    max_sequences: int = 16
    max_new_tokens: int = 512

    def to_environment(self) -> None:
        os.environ[ENVIRONMENT_VARIABLE] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeSettings:
        return cls(**json.loads(os.environ[ENVIRONMENT_VARIABLE]))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """`deploycheck serve`'s options for these settings, each named after its field (`max_rows`:
        `--max-rows`) unless `OPTION_NAMES` says otherwise."""
        for name, (kind, help_text) in OPTIONS.items():
            option = OPTION_NAMES.get(name, name)
            flag = f"--{option.replace('_', '-')}"
            default = next(f.default for f in fields(ServeSettings) if f.name == name)
            if kind is bool:
                parser.add_argument(flag, dest=name, action="store_true", help=help_text)
            else:
                parser.add_argument(flag, dest=name, type=kind, default=default, help=help_text,
                                    metavar="PUBLIC_KEY" if name == "verify_key" else option.upper())

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> ServeSettings:
        return cls(path=args.path, **{name: getattr(args, name) for name in OPTIONS})


OPTION_NAMES = {"request_timeout_s": "request_timeout", "keep_alive_s": "keep_alive", "drain_s": "drain"}
OPTIONS: dict[str, tuple[type, str]] = {
    "max_batch_size": (int, "rows merged from concurrent requests"),
    "max_queue_delay_ms": (float, "how long a batch waits for more requests (0: it takes what queued up meanwhile)"),
    "max_body_mb": (float, "larger request bodies get 413"),
    "max_rows": (int, "rows one request may carry (413 beyond)"),
    "threads": (int, "intra-op threads of each model's runtime, per worker process (idle threads do not spin); "
                     "workers x threads should not exceed the cores"),
    "request_timeout_s": (float, "seconds a connection has to send a whole request before it is closed"),
    "keep_alive_s": (float, "seconds an idle keep-alive connection is kept"),
    "max_connections": (int, "open connections beyond which the oldest one not in a request is closed"),
    "limit_concurrency": (int, "requests in flight beyond which new ones get 503 (None: no limit)"),
    "drain_s": (float, "seconds readiness reports 503 after SIGTERM, while requests are still served"),
    "max_sequences": (int, "sequences each generative model generates at once; a request beyond gets 429"),
    "max_new_tokens": (int, "the most tokens one generate request may ask for"),
    "verify_key": (str, "serve only artifacts signed by this key's owner (PEM; see export --sign-key)"),
    "trust_code": (bool, "load formats whose loading runs code from the artifact (TorchScript, .pt2) unsigned"),
    "baselines": (str, "baselines directory: the release figures the monitor alerts against"),
}
