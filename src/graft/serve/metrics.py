"""`/metrics` in Prometheus' text format (prometheus-client), one registry per app: requests by
path and status, their latency, batch sizes, queue depth, and what model and engine serve."""

from __future__ import annotations

from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    def __init__(self, queue_depth: Any, info: dict[str, str]) -> None:
        import prometheus_client as prom

        self.prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter(
            "graft_requests", "HTTP requests answered", ["path", "status"], registry=self.registry
        )
        self.latency = prom.Histogram(
            "graft_request_seconds", "time to answer a request", ["path"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_size = prom.Histogram(
            "graft_batch_size", "inputs per batch the model ran", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        depth = prom.Gauge("graft_queue_depth", "requests waiting for a batch", registry=self.registry)
        depth.set_function(queue_depth)
        self.model_info = prom.Info("graft_model", "the model served", registry=self.registry)
        self.model_info.info(info)

    def observe(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def text(self) -> tuple[bytes, str]:
        return self.prom.generate_latest(self.registry), self.prom.CONTENT_TYPE_LATEST
