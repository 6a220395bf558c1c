"""A multi-node Ray cluster on this machine with logical GPUs, running the gateway with the GPU
fractions of serve/configs/production.yaml and the tiny checkpoints. Prints one JSON result.

    python -m tests.cluster_scenario --checkpoints checkpoints/tiny

Run by tests/test_multinode.py in a subprocess, so its Ray does not clash with the test
session's. The nodes:

- head: cluster.yaml's head node type, CPUs only; runs the Serve controller and the proxy;
- gpu: cluster.yaml's `gpu_a10g` node type (8 CPUs, 1 GPU), as logical resources: Ray schedules
  the GPU fractions, torch sees no CUDA and the tiny models run on the CPU.

Models: BLIP and SigLIP2 as live models with two replicas each at their production fraction
(0.25 GPU), which fills the one GPU exactly; Florence-2-base (coming soon, 0.25 GPU) then finds no
GPU left, so its replica stays pending and its requests time out after `cold_start_timeout_s`.
Set RAY_SERVE_SLOW_STARTUP_WARNING_S low (the test does) so Serve reports "pending" in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tools.launcher import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = "gigarouter"
PACKED = ["Salesforce/blip-image-captioning-base", "google/siglip2-base-patch16-naflex"]
UNPLACEABLE = "microsoft/Florence-2-base"
REPLICAS_PER_MODEL = 2
COLD_START_TIMEOUT_S = 3


def app_args(checkpoints: Path, demand_db: Path) -> dict[str, Any]:
    """The tiny checkpoints' local entries with production's `ray_actor_options` (GPU fractions)."""
    local = yaml.safe_load((ROOT / "serve/configs/local.yaml").read_text())["applications"][0]["args"]
    production = yaml.safe_load((ROOT / "serve/configs/production.yaml").read_text())["applications"][0]["args"]
    actor_options = {m["id"]: m["deployment"]["ray_actor_options"] for m in production["models"]}
    models = []
    for model in local["models"]:
        if model["id"] not in (*PACKED, UNPLACEABLE):
            continue
        deployment = dict(model.get("deployment", {}), ray_actor_options=dict(actor_options[model["id"]]))
        deployment.pop("autoscaling_config", None)
        if model["id"] in PACKED:
            model = dict(model, status="live")
            deployment["num_replicas"] = REPLICAS_PER_MODEL
        else:
            # no standby worker: this entry is never placed, an idle process would only take memory
            model = dict(model, cold_start_timeout_s=COLD_START_TIMEOUT_S, standby_worker=False)
            deployment["autoscaling_config"] = {"max_replicas": 1}
        models.append(dict(model, deployment=deployment))
    gateway = dict(local["gateway"], demand_db=str(demand_db), ray_actor_options={"num_cpus": 0.25})
    return {"checkpoint_dir": str(checkpoints), "gateway": gateway, "models": models}


def node_types() -> tuple[dict[str, float], dict[str, float]]:
    """The resources of cluster.yaml's head node type and of its single-GPU worker type."""
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]["resources"]
    gpu = min((t["resources"] for t in types.values() if t["resources"].get("GPU", 0) >= 1), key=lambda r: r["GPU"])
    return head, gpu


def replica_nodes() -> dict[str, list[dict[str, str]]]:
    """Deployment name -> its replica actors' node ids and states (dead ones left out)."""
    from serve.ray_compat import replica_actors

    nodes: dict[str, list[dict[str, str]]] = {}
    for actor in replica_actors(APP):
        nodes.setdefault(actor.deployment, []).append({"node": actor.node_id, "state": actor.state})
    return nodes


def wait_for_card(http, model_id: str, check, limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    while True:
        card = http.get(f"/v1/models/{model_id}").json()
        if check(card) or time.monotonic() > deadline:
            return card
        time.sleep(0.5)


def run(checkpoints: Path, workdir: Path) -> dict[str, Any]:
    import httpx
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from serve.app import build_app
    from serve.config import slug
    from tests.helpers import chat, data_url, png_bytes

    result: dict[str, Any] = {"timings_s": {}}
    started = time.monotonic()
    head, gpu = node_types()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": head["CPU"], "num_gpus": head.get("GPU", 0), "include_dashboard": False},
    )
    try:
        gpu_node = cluster.add_node(num_cpus=gpu["CPU"], num_gpus=gpu["GPU"])
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        result["nodes"] = {"head": cluster.head_node.node_id, "gpu": gpu_node.node_id}
        result["timings_s"]["cluster"] = round(time.monotonic() - started, 1)

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        args = app_args(checkpoints, workdir / "demand.sqlite3")
        result["fractions"] = {m["id"]: m["deployment"]["ray_actor_options"].get("num_gpus") for m in args["models"]}
        deployed = time.monotonic()
        serve.run(build_app(args), name=APP, route_prefix="/")
        result["timings_s"]["deploy"] = round(time.monotonic() - deployed, 1)

        image = data_url(png_bytes())
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            blip = http.post("/v1/chat/completions", json=chat(PACKED[0], "", image, max_tokens=8))
            siglip = http.post("/v1/embeddings", json={"model": PACKED[1], "input": ["a red square"]})
            result["served"] = {PACKED[0]: blip.status_code, PACKED[1]: siglip.status_code}

            asked = time.monotonic()
            timed_out = http.post("/v1/chat/completions", json=chat(UNPLACEABLE, "<CAPTION>", image, max_tokens=8))
            result["timings_s"]["unplaceable_request"] = round(time.monotonic() - asked, 1)
            result["unplaceable_response"] = {"status": timed_out.status_code, "body": timed_out.json()}

            card = wait_for_card(http, UNPLACEABLE, lambda c: c["state"] == "pending", 20)
            result["unplaceable_card"] = {k: card[k] for k in ("replicas", "state", "state_reason")}
            listing = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
            result["listing"] = {k: {"replicas": m["replicas"], "state": m["state"]} for k, m in listing.items()}
            again = http.post("/v1/chat/completions", json=chat(PACKED[0], "a photo of", image, max_tokens=8))
            result["served_after"] = again.status_code

        result["placement"] = replica_nodes()
        result["deployments"] = {model_id: slug(model_id) for model_id in (*PACKED, UNPLACEABLE)}
        result["gpu_available"] = ray.available_resources().get("GPU", 0.0)
        result["gpu_total"] = ray.cluster_resources().get("GPU", 0.0)
    finally:
        # The whole cluster goes away: no graceful Serve shutdown (it waits out each replica).
        stopping = time.monotonic()
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()
        result["timings_s"]["shutdown"] = round(time.monotonic() - stopping, 1)
    result["timings_s"]["total"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints" / "tiny")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gigarouter-cluster-scenario"))
    options = parser.parse_args()
    options.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_SERVE_SLOW_STARTUP_WARNING_S", "1")
    os.environ.setdefault("RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S", "1")
    result = run(options.checkpoints.resolve(), options.workdir)
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
