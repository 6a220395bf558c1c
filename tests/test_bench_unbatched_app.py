"""The throughput phase deploys its unbatched gateway app only around that app's own windows
(benchmarks/throughput.py, `Benchmark.unbatched_deployed`), so that the raw loop and the batched
gateway share the machine with one gateway app, as the independent check measures them. Without Ray:
the stack here records what it is asked to do, and the load generator's job is recorded, not sent."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.plan import FULL
from benchmarks.throughput import Benchmark
from benchmarks.throughput_harness import HttpSystem


class RecordingStack:
    """Stands in for `GatewayStack`: the deploy and delete calls, in order."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def deploy(self, app: str, args: dict[str, Any], prefix: str) -> float:
        self.log.append(f"deploy {app} at {prefix} with {args['name']}")
        return 1.0

    def delete(self, app: str) -> None:
        self.log.append(f"delete {app}")


class RecordingBenchmark(Benchmark):
    def __init__(self) -> None:
        super().__init__(FULL)
        self.log: list[str] = []
        self.gateway = RecordingStack(self.log)  # type: ignore[assignment]
        self.apps = {"gateway": "bench-x", "gateway_unbatched": "bench-x-unbatched"}
        self.app_args = {"gateway": ({"name": "b"}, "/b"), "gateway_unbatched": ({"name": "u"}, "/u")}

    def http_window(self, system: HttpSystem, body, concurrency, warmup_s, window_s, *args, **kwargs):
        self.log.append(f"request {system.name} c={concurrency} window={window_s:g}")
        return {"system": system.name}


SYSTEM = HttpSystem("gateway_unbatched", "http://127.0.0.1:1/u/v1/embeddings")
WPLAN = FULL.workloads[0]


def test_the_unbatched_app_is_deployed_answered_once_and_deleted_around_its_window():
    bench = RecordingBenchmark()
    with bench.unbatched_deployed(SYSTEM, {}, WPLAN, False):
        bench.log.append("window")
    assert bench.log == [
        "deploy bench-x-unbatched at /u with u",
        "request gateway_unbatched c=1 window=0",
        "window",
        "delete bench-x-unbatched",
    ]


def test_the_unbatched_app_is_deleted_when_its_window_fails():
    bench = RecordingBenchmark()
    with pytest.raises(RuntimeError), bench.unbatched_deployed(SYSTEM, {}, WPLAN, False):
        raise RuntimeError("the window failed")
    assert bench.log[-1] == "delete bench-x-unbatched"
    assert bench.log[0] == "deploy bench-x-unbatched at /u with u"


def test_other_windows_leave_the_apps_as_they_are():
    bench = RecordingBenchmark()
    with bench.unbatched_deployed(HttpSystem("gateway", "http://127.0.0.1:1/b"), {}, WPLAN, False):
        bench.log.append("window")
    assert bench.log == ["window"]
