"""Per-model Prometheus metrics, exported through Ray's metrics agent (`ray.serve.metrics`)."""

from __future__ import annotations

from ray.serve import metrics

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]
SECONDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


class ModelMetrics:
    """Requests, images, batch sizes, queue wait, inference time and replica starts of one model."""

    def __init__(self, model: str) -> None:
        self.requests = metrics.Counter("gigarouter_model_requests", "requests run by the model", tag_keys=("model",))
        self.images = metrics.Counter("gigarouter_model_images", "images processed", tag_keys=("model",))
        self.replica_starts = metrics.Counter(
            "gigarouter_model_replica_starts", "replicas started (cold starts included)", tag_keys=("model",)
        )
        self.batch_size = metrics.Histogram(
            "gigarouter_model_batch_size", "items per model run", boundaries=BATCH_SIZES, tag_keys=("model",)
        )
        self.queue_wait = metrics.Histogram(
            "gigarouter_model_queue_wait_s", "time from arrival to the start of its model run", boundaries=SECONDS, tag_keys=("model",)
        )
        self.inference = metrics.Histogram(
            "gigarouter_model_inference_s", "time of one model run", boundaries=SECONDS, tag_keys=("model",)
        )
        self.load = metrics.Histogram(
            "gigarouter_model_load_s", "time to load the model in a new replica", boundaries=SECONDS, tag_keys=("model",)
        )
        for metric in (self.requests, self.images, self.replica_starts, self.batch_size, self.queue_wait, self.inference, self.load):
            # A fresh dict each time: Serve adds its own tags to the dict it is given.
            metric.set_default_tags({"model": model})
