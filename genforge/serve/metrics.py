"""Prometheus metrics at `/metrics`: requests, tokens, queue depth and latency histograms."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "genforge_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.in_flight = Gauge(
            "genforge_requests_in_flight", "generation requests being answered", registry=r
        )
        self.engine = Gauge(
            "genforge_engine_requests",
            "engine requests by state, all models",
            ["state"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "genforge_prompt_tokens", "prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "genforge_completion_tokens", "tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            "genforge_time_to_first_token_seconds",
            "time from request to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "genforge_request_duration_seconds",
            "time to answer a request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.models_loaded = Gauge("genforge_models_loaded", "models in memory", registry=r)
        self.images = Counter(
            "genforge_images_generated", "pictures drawn by image models", ["model"], registry=r
        )

    def render(self, engines: list) -> bytes:
        self.models_loaded.set(len(engines))
        running = sum(len(e.scheduler.running) for e in engines)
        waiting = sum(len(e.scheduler.waiting) for e in engines)
        self.engine.labels("running").set(running)
        self.engine.labels("waiting").set(waiting)
        return generate_latest(self.registry)
