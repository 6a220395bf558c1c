"""The demand-aware autoscaling policy, called directly with real Serve `AutoscalingContext` objects
and real demand counts in the gateway's store (SQLite here), and loaded the way the Serve controller loads it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serve.autoscaling import DemandAwarePolicy
from serve.config import DEMAND_POLICY_PATH, ModelSpec
from serve.store import Store
from serve.store.blocking import BlockingStore

MODEL = "microsoft/Florence-2-base"
DEPLOYMENT = DeploymentID(name="florence-2-base", app_name="gigarouter")


def context(
    running: int, requests: float = 0.0, target: int | None = None, now: float | None = None
) -> AutoscalingContext:
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=DEPLOYMENT) for i in range(running)]
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=running,
        target_num_replicas=running if target is None else target,
        running_replicas=replicas,
        total_num_requests=requests,
        total_queued_requests=0.0,
        aggregated_metrics={},
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=4,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time() if now is None else now,
        config=AutoscalingConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=2),
    )


class Demand:
    """Interest signals written to a migrated store, as the ingress writes them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = BlockingStore(url)
        self._store.call(Store.migrate, timeout_s=30)

    def record(self, model: str, at: float | None = None) -> int:
        when = datetime.fromtimestamp(at, UTC) if at is not None else None
        return self._store.call(lambda store: store.record_interest(model, at=when))


@pytest.fixture
def store(tmp_path) -> Demand:
    return Demand(f"sqlite+aiosqlite:///{tmp_path / 'gigarouter.sqlite3'}")


def policy(store: Demand, **settings) -> DemandAwarePolicy:
    return DemandAwarePolicy(MODEL, store.url, **{"interest_window_s": 600, "refresh_s": 0, **settings})


def test_first_queued_request_wakes_a_cold_model(store):
    decide = policy(store)
    assert decide(context(running=0, requests=0))[0] == 0
    assert decide(context(running=0, requests=1))[0] == 1
    assert decide(context(running=0, requests=0.2))[0] == 1  # a request averaged over the look-back window


def test_load_follows_target_ongoing_requests(store):
    decide = policy(store)
    assert decide(context(running=1, requests=10))[0] == 5  # 10 ongoing / 2 per replica
    assert decide(context(running=2, requests=3))[0] == 2
    assert decide(context(running=1, requests=0))[0] == 0  # idle: Serve applies downscale_to_zero_delay_s


def test_interest_prewarms_a_cold_model(store):
    decide = policy(store, prewarm_interest=3)
    for _ in range(2):
        store.record(MODEL)
    store.record("another/model")
    assert decide(context(running=0))[0] == 0
    store.record(MODEL)
    replicas, state = decide(context(running=0))
    assert replicas == 1
    assert state == {"recent_interest": 3, "demand_floor": 1, "decided_by": "prewarm"}


def test_recent_demand_keeps_a_replica_and_old_demand_does_not(store):
    decide = policy(store, keep_warm_interest=2, interest_window_s=60)
    now = time.time()
    store.record(MODEL, at=now - 3600)
    store.record(MODEL, at=now - 3600)
    store.record(MODEL, at=now - 10)
    assert decide(context(running=1, now=now))[0] == 0  # one recent signal: not enough
    store.record(MODEL, at=now - 5)
    assert decide(context(running=1, now=now)) == (
        1,
        {"recent_interest": 2, "demand_floor": 1, "decided_by": "keep_warm"},
    )
    assert decide(context(running=0, now=now))[0] == 0  # keep-warm holds a replica; it does not wake one
    assert decide(context(running=0, target=1, now=now))[0] == 1  # ... but holds one that is starting
    assert decide(context(running=1, requests=10, now=now))[0] == 5  # load above the floor wins


def test_a_starting_replica_nobody_waits_for_is_released(store):
    # Serve's default policy keeps the target while no replica runs; this one lets an unplaceable
    # replica go once its requests have timed out and nothing else asks for the model.
    assert policy(store)(context(running=0, target=1, requests=0))[0] == 0


def test_counts_are_cached_between_refreshes(store):
    decide = policy(store, prewarm_interest=1, refresh_s=30)
    now = time.time()
    assert decide(context(running=0, now=now))[0] == 0
    store.record(MODEL)
    assert decide(context(running=0, now=now + 1))[0] == 0  # read at most every refresh_s
    assert decide(context(running=0, now=now + 31))[0] == 1


def test_a_missing_or_broken_store_means_no_demand(tmp_path):
    missing = DemandAwarePolicy(MODEL, f"sqlite+aiosqlite:///{tmp_path / 'nothing.sqlite3'}", prewarm_interest=1, refresh_s=0)
    assert missing(context(running=0))[0] == 0
    (tmp_path / "garbage.sqlite3").write_bytes(b"not a database" * 100)
    broken = DemandAwarePolicy(MODEL, f"sqlite+aiosqlite:///{tmp_path / 'garbage.sqlite3'}", prewarm_interest=1, refresh_s=0)
    assert broken(context(running=0, requests=1))[0] == 1
    assert DemandAwarePolicy(MODEL, None, prewarm_interest=1)(context(running=0))[0] == 0


def test_catalog_entry_wires_the_policy_through_serve_config(store):
    spec = ModelSpec.model_validate(
        {
            "id": MODEL,
            "source": "florence-2-base",
            "family": "florence2",
            "status": "coming_soon",
            "demand_policy": {"prewarm_interest": 1, "keep_warm_interest": 1, "refresh_s": 0},
        }
    )
    options = spec.serve_options(demand_db=store.url)
    config = AutoscalingConfig(**options["autoscaling_config"])  # as Serve validates deployment options
    assert config.policy.policy_function == DEMAND_POLICY_PATH
    assert config.policy.policy_kwargs["model_id"] == MODEL
    # The controller unpickles the policy by value and instantiates the class with policy_kwargs.
    loaded = config.policy.get_policy()(**config.policy.policy_kwargs)
    store.record(MODEL)
    assert loaded(context(running=0))[0] == 1
    assert config.min_replicas == 0 and config.initial_replicas == 0


def test_policy_settings_are_validated():
    base = {"id": "a/b", "source": "x", "family": "blip"}
    with pytest.raises(ValueError, match="keep_warm_interest"):
        ModelSpec.model_validate(
            {**base, "status": "coming_soon", "demand_policy": {"prewarm_interest": 1, "keep_warm_interest": 2}}
        )
    with pytest.raises(ValueError, match="autoscaled"):
        ModelSpec.model_validate(
            {**base, "status": "coming_soon", "deployment": {"num_replicas": 1}, "demand_policy": {}}
        )
    with pytest.raises(ValueError, match="autoscaled"):
        ModelSpec.model_validate({**base, "status": "live", "demand_policy": {}})
    with pytest.raises(ValueError, match="not both"):
        ModelSpec.model_validate(
            {**base, "status": "coming_soon", "deployment": {"autoscaling_config": {"policy": {}}}, "demand_policy": {}}
        )
    live = ModelSpec.model_validate(
        {**base, "deployment": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}, "demand_policy": {}}
    )
    assert live.serve_options()["autoscaling_config"]["policy"]["policy_function"] == DEMAND_POLICY_PATH
    assert "policy" not in live.deployment.autoscaling_config  # the catalog entry itself is not mutated
    with pytest.raises(ValueError):
        DemandAwarePolicy(MODEL, prewarm_interest=0)
