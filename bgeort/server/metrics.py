"""Prometheus metrics (prometheus-client), one registry per app so several apps in a process (tests)
do not share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TEXT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("bgeort_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=registry)
        self.errors = Counter("bgeort_request_errors", "HTTP requests answered with a 4xx/5xx, by route and status",
                              ["route", "status"], registry=registry)
        self.latency = Histogram("bgeort_request_seconds", "Time from request to response, by route", ["route"],
                                 buckets=SECOND_BUCKETS, registry=registry)
        self.tokens = Counter("bgeort_tokens", "Tokens run through a model (after truncation)", ["model"],
                              registry=registry)
        self.batches = Counter("bgeort_batches", "Library calls run by the batching queue", ["model"],
                               registry=registry)
        self.batch_texts = Histogram("bgeort_batch_texts", "Texts per library call", ["model"],
                                     buckets=TEXT_BUCKETS, registry=registry)
        self.batch_tokens = Histogram("bgeort_batch_tokens", "Tokens per library call", ["model"],
                                      buckets=TOKEN_BUCKETS, registry=registry)
        self.queue_seconds = Histogram("bgeort_queue_seconds", "Time a request waited in the queue", ["model"],
                                       buckets=SECOND_BUCKETS, registry=registry)
        self.inference_seconds = Histogram("bgeort_inference_seconds", "Time of one library call", ["model"],
                                           buckets=SECOND_BUCKETS, registry=registry)
        self.queue_depth = Gauge("bgeort_queue_texts", "Texts waiting in the queue", ["model"], registry=registry)
        self._answered = {}  # (route, status) -> the labelled children answered() updates

    def watch(self, role: str, model) -> None:
        """Observe every batch of an AsyncEmbedder / AsyncReranker under the label `role`."""
        self.queue_depth.labels(role).set_function(lambda: model.stats.queued_texts)

        # The labelled children once, not per batch: labels() takes a lock and a lookup each call.
        batches, batch_texts, batch_tokens, tokens, inference_seconds, queue_seconds = (
            metric.labels(role) for metric in (self.batches, self.batch_texts, self.batch_tokens, self.tokens,
                                               self.inference_seconds, self.queue_seconds))

        def observe(record) -> None:
            batches.inc()
            batch_texts.observe(record.texts)
            batch_tokens.observe(record.tokens)
            tokens.inc(record.tokens)
            inference_seconds.observe(record.inference_seconds)
            for seconds in record.queue_seconds:
                queue_seconds.observe(seconds)

        model.stats.observers.append(observe)

    def answered(self, route: str, status: int, seconds: float) -> None:
        children = self._answered.get((route, status))
        if children is None:  # (route, status) pairs are few: the routes, "unmatched" and the statuses
            label = str(status)
            children = self._answered[(route, status)] = (
                self.requests.labels(route, label), self.errors.labels(route, label) if status >= 400 else None,
                self.latency.labels(route))
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
