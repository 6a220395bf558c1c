"""Standby workers' pure parts: which models get one, where one may go, and the claim that lets only
one ingress replica start it. The runtime env it must match is tested with the rest of Ray's
internals in tests/test_ray_compat.py; the end-to-end check (a cold start runs in the standby
process) is in tests/test_elastic.py."""

from __future__ import annotations

import asyncio

import shlex
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from serve.config import ModelSpec
from serve.store import Store
from serve.standby import PRELOAD_MARKER, PRELOAD_MODULE, StandbyLedger, fits, marker_of, preloading


def spec(**overrides) -> ModelSpec:
    return ModelSpec.model_validate({"id": "acme/Model-X", "source": "acme/model-x", "family": "blip", **overrides})


def test_models_that_scale_to_zero_start_through_the_preloader():
    options = spec(status="coming_soon").serve_options()
    runtime_env = options["ray_actor_options"]["runtime_env"]
    assert shlex.split(runtime_env["py_executable"]) == [sys.executable, "-m", PRELOAD_MODULE]
    assert runtime_env["env_vars"]["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0", "the other settings stay"


def test_models_that_keep_a_replica_or_opt_out_get_no_standby():
    for model in (
        spec(),
        spec(status="coming_soon", standby_worker=False),
        spec(status="coming_soon", deployment={"autoscaling_config": {"min_replicas": 1}}),
    ):
        assert not model.uses_standby
        assert "py_executable" not in model.serve_options()["ray_actor_options"]["runtime_env"]
    assert spec(status="coming_soon", deployment={"autoscaling_config": {"max_replicas": 3}}).uses_standby


def test_an_operator_chosen_interpreter_rules_out_a_standby():
    own = {"num_cpus": 1, "runtime_env": {"pip": ["pkg"]}}
    with pytest.raises(ValidationError, match="standby_worker: false"):
        spec(status="coming_soon", deployment={"ray_actor_options": own})
    kept = spec(status="coming_soon", standby_worker=False, deployment={"ray_actor_options": own})
    runtime_env = kept.serve_options()["ray_actor_options"]["runtime_env"]
    assert runtime_env["pip"] == ["pkg"] and "py_executable" not in runtime_env


def test_preloading_keeps_the_other_options_and_quotes_the_interpreter():
    options = {"num_cpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}}}
    result = preloading(options, python="/opt/my env/bin/python")
    key = result["runtime_env"]["env_vars"][PRELOAD_MARKER]
    assert result["num_cpus"] == 0.5 and result["runtime_env"]["env_vars"] == {"A": "1", PRELOAD_MARKER: key}
    assert shlex.split(result["runtime_env"]["py_executable"]) == ["/opt/my env/bin/python", "-m", PRELOAD_MODULE]
    assert options == {"num_cpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}}}, "the input is not modified"


def test_the_marker_is_a_key_of_the_env_equal_for_equal_envs_only():
    a = preloading({"num_cpus": 0.25, "runtime_env": {"env_vars": {"A": "1"}}})
    again = preloading({"num_cpus": 0.25, "runtime_env": {"env_vars": {"A": "1"}}})
    other = preloading({"num_cpus": 0.25, "runtime_env": {"env_vars": {"A": "2"}}})
    assert marker_of(a) == marker_of(again) and marker_of(a) != marker_of(other)
    assert marker_of(preloading(a)) == marker_of(a), "preloading twice keeps the key"
    assert marker_of({"num_cpus": 1}) is None


def test_a_standby_goes_only_where_the_replica_could_run():
    cpu_node = {"CPU": 8.0, "memory": 3e10}
    gpu_node = {"CPU": 8.0, "GPU": 1.0, "memory": 3e10, "accelerator_type:H100": 1.0}
    quarter_gpu = {"num_cpus": 1, "num_gpus": 0.25}
    assert fits(gpu_node, quarter_gpu) and not fits(cpu_node, quarter_gpu)
    assert fits(cpu_node, {"num_cpus": 0.1}) and fits(gpu_node, {"num_cpus": 0.1})
    assert not fits(cpu_node, {"num_cpus": 16})
    assert fits(gpu_node, {"resources": {"accelerator_type:H100": 0.001}})
    assert not fits(cpu_node, {"resources": {"accelerator_type:H100": 0.001}})
    assert not fits(gpu_node, {"memory": 4e10})


def test_a_standby_is_claimed_once_until_it_is_due_again(tmp_path):
    async def scenario():
        url = f"sqlite+aiosqlite:///{tmp_path / 'state.sqlite3'}"
        async with Store(url) as store, Store(url) as other:
            await store.migrate()
            ledger = StandbyLedger(store)
            assert await ledger.claim("env@node", now=100.0, started_before=0.0)
            assert not await ledger.claim("env@node", now=105.0, started_before=50.0), "started at 100, not due"
            assert await ledger.claim("env@other-node", now=105.0, started_before=50.0), "each node has its own"
            assert await ledger.claim("env@node", now=200.0, started_before=150.0), "due again (renewal, or woke)"
            assert not await StandbyLedger(other).claim("env@node", now=201.0, started_before=150.0)
            assert await ledger.last_start("env@node") == 200.0 and await ledger.last_start("env@nowhere") is None

    asyncio.run(scenario())


def test_of_many_ingress_replicas_claiming_at_once_exactly_one_wins(tmp_path):
    async def scenario():
        url = f"sqlite+aiosqlite:///{tmp_path / 'state.sqlite3'}"
        stores = [Store(url) for _ in range(4)]
        await stores[0].migrate()
        ledgers = [StandbyLedger(store) for store in stores]
        wins = await asyncio.gather(
            *(ledgers[i % 4].claim("env@node", now=1000.0 + i, started_before=500.0) for i in range(16))
        )
        for store in stores:
            await store.close()
        return wins

    assert sum(asyncio.run(scenario())) == 1
