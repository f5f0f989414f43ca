"""`serve`: the server on uvicorn, one or several worker processes, with `GuardedProtocol`'s connection limits
and the descriptor limit raised (SIGTERM's drain is the app's: see `InferenceServer.lifespan`)."""

from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

from deploycheck.server.connections import raise_descriptor_limit
from deploycheck.server.repository import discover
from deploycheck.server.settings import ServeSettings


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:
    """Run the server (what `deploycheck serve` does). With several workers, each process loads the artifacts
    itself and Prometheus metrics are aggregated through a shared multiprocess directory."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    discover(settings.path, settings.verify_key, settings.trust_code)  # fail before starting when nothing loads
    settings.to_environment()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="deploycheck-prometheus-")
    raise_descriptor_limit()
    uvicorn.run("deploycheck.server.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                access_log=False, log_level=log_level, timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                limit_concurrency=settings.limit_concurrency, timeout_graceful_shutdown=30,
                http="deploycheck.server.connections:GuardedProtocol",
                log_config=_log_config(LOGGING_CONFIG, log_level))


def _log_config(uvicorn_config: dict[str, Any], log_level: str) -> dict[str, Any]:
    """uvicorn's logging with deploycheck's logger added, so each worker says which models and formats it loaded
    and which it skipped (and why), in uvicorn's format."""
    config = copy.deepcopy(uvicorn_config)
    config["loggers"]["deploycheck"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config
