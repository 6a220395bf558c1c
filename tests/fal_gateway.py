"""A small gateway over TLS for tests/test_fal.py, in a process of its own: one Serve per Ray, and the
session's gateway (tests/conftest.py) speaks plain http. Florence-2-large (live), Florence-2-base, Kosmos-2 and
BLIP (coming soon: woken by the tests), two ingress replicas (two job runners), API keys on.

    python -m tests.fal_gateway --checkpoints checkpoints/tiny --certs DIR --state DIR --ready FILE

The certificate files are DIR/gateway.crt, gateway.key and ca.crt (tools/selfsigned.py); the accepted
API keys are $FAL_TEST_GATEWAY_KEY (comma-separated); webhooks are signed with $GIGAROUTER_WEBHOOK_SECRET. Writes `{"url": ...}` to FILE once the gateway is ready, then serves
until its stdin closes (or SIGTERM), and stops Serve and its own Ray: the processes of this Ray
instance and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from serve.fal.settings import WEBHOOK_SECRET_ENV
from tests.helpers import BLIP, FLORENCE_BASE, FLORENCE_LARGE, KOSMOS, local_args
from tools.launcher import LocalStack
from tools.selfsigned import TLSFiles

KEY_ENV = "FAL_TEST_GATEWAY_KEY"
APP = "gigarouter"


def app_args(checkpoints: Path, state: Path) -> dict[str, Any]:
    args = local_args()
    args["checkpoint_dir"] = str(checkpoints)
    args["models"] = [model for model in args["models"] if model["id"] in (FLORENCE_LARGE, FLORENCE_BASE, KOSMOS, BLIP)]
    args["gateway"].update(
        auth={"enabled": True, "keys_env": KEY_ENV},
        # data URLs only: nothing sent here is ever fetched; 127.0.0.1 is allowed for the tests' webhook receiver
        images={"allow_http": False, "allow_hosts": ["127.0.0.1"]},
        demand_db=str(state / "gateway.sqlite3"),
        ray_actor_options={"num_cpus": 0.1},
        num_replicas=2,  # two job runners: no job may run twice
        # one job at a time per replica (so a third job waits, to be cancelled), short leases (a killed
        # runner's job is taken over within seconds, yet a runner starved of CPU for a few seconds while a
        # model loads on 2 cores keeps its job), quick webhook retries
        fal={"runner_concurrency": 1, "lease_s": 6, "poll_s": 0.1, "webhook_backoff_s": 0.5},
    )
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    options = parser.parse_args(argv)
    tls = TLSFiles(
        certfile=str(options.certs / "gateway.crt"),
        keyfile=str(options.certs / "gateway.key"),
        cafile=str(options.certs / "ca.crt"),
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # runs the stack's shutdown below
    with LocalStack(num_cpus=2, worker_env={KEY_ENV: os.environ[KEY_ENV], WEBHOOK_SECRET_ENV: os.environ[WEBHOOK_SECRET_ENV]}, tls=tls, log_to_driver=False) as stack:
        stack.deploy(APP, app_args(options.checkpoints, options.state))
        stack.wait_ready(timeout_s=120)
        partial = options.ready.with_suffix(".partial")
        partial.write_text(json.dumps({"url": stack.url}))
        partial.replace(options.ready)  # whole or not there
        sys.stdin.read()  # until the test closes it (or goes away)
    return 0


if __name__ == "__main__":
    sys.exit(main())
