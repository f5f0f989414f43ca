"""`serve`: the server on uvicorn, one or several worker processes."""

from __future__ import annotations

import os
import tempfile

from deploycheck.server.repository import discover


def serve(path: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_batch_size: int = 32,
          max_queue_delay_ms: float = 0.0, max_body_mb: float = 16.0, baselines: str | None = None,
          log_level: str = "info") -> None:
    """Run the server on uvicorn (what `deploycheck serve` does). With several workers, each process loads the
    artifacts itself and Prometheus metrics are aggregated through a shared multiprocess directory."""
    import uvicorn

    discover(path)  # fail before starting workers when nothing servable is there
    os.environ.update({"DEPLOYCHECK_SERVE_PATH": str(path), "DEPLOYCHECK_SERVE_MAX_BATCH_SIZE": str(max_batch_size),
                       "DEPLOYCHECK_SERVE_MAX_QUEUE_DELAY_MS": str(max_queue_delay_ms),
                       "DEPLOYCHECK_SERVE_MAX_BODY_MB": str(max_body_mb)})
    if baselines:
        os.environ["DEPLOYCHECK_SERVE_BASELINES"] = baselines
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="deploycheck-prometheus-")
    uvicorn.run("deploycheck.server.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                access_log=False, log_level=log_level, timeout_graceful_shutdown=30)
