"""cluster.yaml is a valid Ray cluster launcher config, and every replica in production.yaml fits a node type."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from serve.config import AppArgs
from tests.helpers import ROOT

CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
PRODUCTION = yaml.safe_load((ROOT / "serve" / "configs" / "production.yaml").read_text())["applications"][0]["args"]
NODE_TYPES = CLUSTER["available_node_types"]


def test_cluster_yaml_matches_the_installed_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    assert CLUSTER["head_node_type"] in NODE_TYPES
    assert sum(t.get("max_workers", 0) for t in NODE_TYPES.values()) <= CLUSTER["max_workers"]


def fits(request: dict, resources: dict) -> bool:
    return all(float(resources.get(name, 0)) >= float(amount) for name, amount in request.items())


def replica_request(options: dict) -> dict[str, float]:
    """The logical resources one replica asks Ray for (Ray's default is one CPU)."""
    request = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0)}
    request.update(options.get("resources", {}))
    return {name: amount for name, amount in request.items() if amount}


@pytest.mark.parametrize("model", AppArgs.model_validate(PRODUCTION).models, ids=lambda m: m.id)
def test_every_production_replica_fits_a_node_type(model):
    request = replica_request(model.deployment.ray_actor_options)
    homes = [name for name, node in NODE_TYPES.items() if fits(request, node["resources"])]
    assert homes, f"{model.id} asks for {request}; no node type in cluster.yaml has that: {NODE_TYPES}"
    if request.get("GPU"):
        # A fraction must divide a GPU so replicas pack without stranding capacity.
        assert request["GPU"] <= 1 and (1 / request["GPU"]).is_integer(), request
        gpu_homes = [name for name in homes if NODE_TYPES[name]["resources"].get("GPU", 0) > 0]
        assert gpu_homes and all(NODE_TYPES[name].get("max_workers", 0) > 0 for name in gpu_homes)


def test_ingress_fits_the_head_node():
    gateway = AppArgs.model_validate(PRODUCTION).gateway
    assert fits(replica_request(gateway.ray_actor_options), NODE_TYPES[CLUSTER["head_node_type"]]["resources"])
