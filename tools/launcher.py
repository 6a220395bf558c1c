"""The local Ray Serve stack that the tests, the soak and the benchmark deploy the gateway on.

A fresh Ray of this process's own (`address="local"`: never a cluster that another process
started), no dashboard, Serve's HTTP proxy on 127.0.0.1 at a free port. Ray's driver is this
process, so callers keep using Ray and Serve directly: the tests read replicas through
`serve.get_app_handle`, the soak kills them with `ray.kill`, the benchmark reads their stats.
`shutdown()` stops Serve and this Ray, which takes the processes of this Ray instance with it and
nothing else.

    with LocalStack(num_cpus=4) as stack:
        stack.deploy("gigarouter", args)  # the `args:` of a Serve config, as `serve run` passes them
        stack.wait_ready()
        httpx.get(f"{stack.url}/v1/models")

With `tls=TLSFiles(...)` (tools/selfsigned.py) Serve's proxy speaks https only, with that certificate
(Serve's `http_options.ssl_certfile`/`ssl_keyfile`); `url` is then https and this process's own calls
(`wait_ready`) trust the files' CA.

The environment is set in this process before Ray starts (`prepare_env`) because Ray's processes
inherit it from here: Serve's HTTP proxy reads its middleware from it (serve/proxy_errors.py), Ray
binds to 127.0.0.1 only with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and idle standby workers read
their grace period from it (deployments/standby_slot.py). A value already set (the caller's shell,
the Makefile) wins.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

from deployments.standby_slot import GRACE_ENV
from serve.proxy_errors import CALLBACK_ENV, CALLBACK_PATH
from tools.selfsigned import TLSFiles

logger = logging.getLogger("tools.launcher")

PROCESS_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    CALLBACK_ENV: CALLBACK_PATH,
}
"""Set in this process (unless already set) before Ray starts; every Ray process inherits it."""
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""The job's runtime_env: what every Ray worker gets even where this process's environment says otherwise."""


def prepare_env(standby_grace_s: float | None = None) -> None:
    """Set `PROCESS_ENV` (and the standby grace period, when given) in this process where not set yet."""
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)
    if standby_grace_s is not None:
        os.environ.setdefault(GRACE_ENV, str(standby_grace_s))


# Ports a Ray node binds whatever else is free, when nothing sets them: GCS, object manager, Ray
# client, the dashboard, the dashboard agent's HTTP server, Serve's fallback proxy and HAProxy's
# metrics and stats. A port picked before Ray starts must not be one of them: the benchmark's
# overhead phase once got 52365 for Serve, and the dashboard agent took it first.
RAY_DEFAULT_PORTS = frozenset({6379, 8076, 10001, 8265, 52365, 8500, 9101, 8404})


def free_port(avoid: frozenset[int] = RAY_DEFAULT_PORTS) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that is not in `avoid`."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


class LocalStack:
    """A local Ray (no dashboard) with Serve's HTTP proxy on 127.0.0.1; gateway apps come and go.

    `num_cpus`: the CPUs this Ray schedules on. `worker_env`: extra environment of every Ray worker
    (on top of `WORKER_ENV`). `standby_grace_s`: how long an extra idle standby worker stays (the
    default is 30 s). `log_to_driver`: whether the workers' output is printed by this process.
    `tls`: serve https with this certificate and key instead of http.
    """

    def __init__(
        self,
        *,
        num_cpus: int = 4,
        worker_env: Mapping[str, str] | None = None,
        standby_grace_s: float | None = None,
        log_to_driver: bool = True,
        tls: TLSFiles | None = None,
    ) -> None:
        import ray
        from ray import serve

        prepare_env(standby_grace_s)
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=tls.cafile) if tls else True
        http_options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if tls is not None:
            http_options.update(ssl_certfile=tls.certfile, ssl_keyfile=tls.keyfile)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            logging_level="WARNING",
            runtime_env={"env_vars": {**WORKER_ENV, **(worker_env or {})}},
        )
        try:
            serve.start(http_options=http_options)
        except BaseException:
            ray.shutdown()
            raise
        logger.info("Ray Serve up, HTTP on %s", self.url)

    def deploy(self, app_name: str, args: dict[str, Any], route_prefix: str = "/") -> float:
        """Deploy `build_app(args)` as `app_name` under `route_prefix`; seconds until Serve says it runs."""
        from ray import serve

        from serve.app import build_app

        started = time.perf_counter()
        serve.run(build_app(args), name=app_name, route_prefix=route_prefix)
        seconds = time.perf_counter() - started
        logger.info("deployed gateway app %s at %s%s in %.1fs", app_name, self.url, route_prefix, seconds)
        return seconds

    def wait_ready(self, route_prefix: str = "/", timeout_s: float = 60.0, poll_s: float = 0.2) -> float:
        """Poll the app's `/health/ready` until it answers 200 (every live model has a replica); seconds waited."""
        url = f"{self.url}{route_prefix.rstrip('/')}/health/ready"
        started = time.monotonic()
        # No proxies from the environment: straight to 127.0.0.1.
        with httpx.Client(timeout=30, trust_env=False, verify=self.verify) as http:
            while time.monotonic() - started < timeout_s:
                try:
                    if http.get(url).status_code == 200:
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                time.sleep(poll_s)
        raise TimeoutError(f"the gateway at {url} was not ready within {timeout_s:g} s")

    def delete(self, app_name: str) -> None:
        from ray import serve

        serve.delete(app_name)

    def shutdown(self) -> None:
        """Stop Serve, then this Ray and its processes."""
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        logger.info("Ray Serve and Ray stopped")

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()
