"""The typed catalog configuration and the deployment options it produces."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from serve.config import REPLICA_ENV, AppArgs, GatewayConfig, ModelSpec, slug
from tests.helpers import ROOT, local_args

PRODUCTION_CONFIG = ROOT / "serve" / "configs" / "production.yaml"


def spec(**overrides) -> ModelSpec:
    return ModelSpec.model_validate({"id": "acme/Model-X", "source": "acme/model-x", "family": "blip", **overrides})


def test_local_config_has_the_five_catalog_models():
    args = AppArgs.model_validate(local_args())
    by_id = {m.id: m for m in args.models}
    assert set(by_id) == {
        "microsoft/Florence-2-large",
        "microsoft/Florence-2-base",
        "microsoft/kosmos-2-patch14-224",
        "google/siglip2-base-patch16-naflex",
        "Salesforce/blip-image-captioning-base",
    }
    assert by_id["microsoft/Florence-2-large"].status == "live"
    for model in args.models:
        options = model.serve_options()
        assert options["ray_actor_options"]["num_cpus"] < 1
        assert options["max_ongoing_requests"] >= options["user_config"]["max_batch_size"]
        if model.status == "coming_soon":
            scaling = options["autoscaling_config"]
            assert scaling["min_replicas"] == 0 and scaling["initial_replicas"] == 0
            assert scaling["upscale_delay_s"] == 0
        else:
            assert options["num_replicas"] == 1


def test_production_config_uses_real_sources_and_gpu_fractions():
    config = yaml.safe_load(PRODUCTION_CONFIG.read_text())
    args = AppArgs.model_validate(config["applications"][0]["args"])
    fractions = {m.id: m.deployment.ray_actor_options["num_gpus"] for m in args.models}
    assert fractions["microsoft/Florence-2-large"] == 0.5
    assert fractions["microsoft/kosmos-2-patch14-224"] == 0.5
    assert fractions["google/siglip2-base-patch16-naflex"] == 0.25
    sources = {m.id: m.source for m in args.models}
    assert sources["microsoft/Florence-2-large"] == "florence-community/Florence-2-large"
    assert all(m.dtype in ("float16", "bfloat16") for m in args.models)
    live = [m for m in args.models if m.status == "live"]
    assert all(m.serve_options()["autoscaling_config"]["min_replicas"] >= 1 for m in live)


def test_deployment_names_are_slugs():
    assert slug("microsoft/Florence-2-large") == "florence-2-large"
    assert slug("google/siglip2-base-patch16-naflex") == "siglip2-base-patch16-naflex"
    assert spec(deployment={"name": "custom"}).deployment_name == "custom"


def test_batches_must_be_able_to_fill():
    with pytest.raises(ValidationError, match="max_ongoing_requests"):
        spec(batching={"max_batch_size": 32}, deployment={"max_ongoing_requests": 8})


def test_live_models_keep_a_replica():
    with pytest.raises(ValidationError, match="at least one replica"):
        spec(status="live", deployment={"num_replicas": 0})
    with pytest.raises(ValidationError, match="at least one replica"):
        spec(status="live", deployment={"autoscaling_config": {"min_replicas": 0}})
    assert spec(status="coming_soon").min_replicas == 0


def test_coming_soon_overrides_merge_into_scale_to_zero_defaults():
    options = spec(status="coming_soon", deployment={"autoscaling_config": {"max_replicas": 3}}).serve_options()
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert options["autoscaling_config"]["min_replicas"] == 0
    assert options["autoscaling_config"]["metrics_interval_s"] == 1.0


def test_unknown_keys_and_families_are_rejected():
    with pytest.raises(ValidationError):
        spec(familly="blip")
    with pytest.raises(ValidationError):
        spec(family="llama")
    with pytest.raises(ValidationError, match="generation"):
        spec(generation={"max_new_tokens": 2000, "max_new_tokens_cap": 100})


def test_duplicate_ids_are_rejected():
    model = {"id": "a/b", "source": "x", "family": "blip"}
    with pytest.raises(ValidationError, match="share the id"):
        AppArgs.model_validate({"models": [model, model]})


def test_local_sources_resolve_to_absolute_paths(tmp_path):
    (tmp_path / "blip").mkdir()
    args = AppArgs.model_validate({"models": [{"id": "a/b", "source": "blip", "family": "blip"}], "checkpoint_dir": str(tmp_path)})
    assert args.resolve_source("blip") == str((tmp_path / "blip").resolve())
    assert args.resolve_source("Salesforce/blip-image-captioning-base") == "Salesforce/blip-image-captioning-base"


def test_replicas_get_the_serving_path_environment():
    options = spec().serve_options()
    env = options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == REPLICA_ENV, "by default torch threads keep OpenMP's own wait policy"
    assert options["ray_actor_options"]["num_cpus"] == 1
    passive = spec(cpu_thread_wait="passive").serve_options()["ray_actor_options"]["runtime_env"]["env_vars"]
    assert passive == {**REPLICA_ENV, "OMP_WAIT_POLICY": "PASSIVE"}
    ingress_env = GatewayConfig().serve_options()["ray_actor_options"]["runtime_env"]["env_vars"]
    assert ingress_env == REPLICA_ENV
    with pytest.raises(ValidationError):
        spec(cpu_thread_wait="active")


def test_environment_set_by_the_operator_wins():
    own = {"num_cpus": 2, "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "ACTIVE", "X": "1"}, "pip": ["a"]}}
    options = spec(cpu_thread_wait="passive", deployment={"ray_actor_options": own}).serve_options()
    runtime_env = options["ray_actor_options"]["runtime_env"]
    assert runtime_env["env_vars"]["OMP_WAIT_POLICY"] == "ACTIVE"
    assert runtime_env["env_vars"]["X"] == "1"
    assert runtime_env["pip"] == ["a"]
    assert runtime_env["env_vars"]["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0"
    assert own["runtime_env"]["env_vars"] == {"OMP_WAIT_POLICY": "ACTIVE", "X": "1"}, "the spec is not modified"


def test_the_applications_runtime_env_reaches_every_deployment_below_the_deployments_own():
    app_env = {"env_vars": {"HF_TOKEN": "t", "OMP_WAIT_POLICY": "ACTIVE", "X": "app"}, "working_dir": "gcs://w.zip"}
    own = {"num_cpus": 1, "runtime_env": {"env_vars": {"X": "deployment"}}}
    model = spec(cpu_thread_wait="passive", deployment={"ray_actor_options": own}).serve_options(app_env=app_env)
    runtime_env = model["ray_actor_options"]["runtime_env"]
    assert runtime_env["working_dir"] == "gcs://w.zip"
    assert runtime_env["env_vars"]["HF_TOKEN"] == "t"
    assert runtime_env["env_vars"]["OMP_WAIT_POLICY"] == "ACTIVE", "the application's value wins over ours"
    assert runtime_env["env_vars"]["X"] == "deployment", "the deployment's own value wins over the application's"
    assert runtime_env["env_vars"]["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] == "0", "ours where nobody set one"
    ingress = GatewayConfig().serve_options(app_env)["ray_actor_options"]["runtime_env"]
    assert ingress["env_vars"]["HF_TOKEN"] == "t" and ingress["working_dir"] == "gcs://w.zip"
    assert app_env["env_vars"]["X"] == "app", "the input is not modified"


def test_an_application_env_that_picks_an_interpreter_turns_standbys_off():
    cold = spec(status="coming_soon")
    assert cold.standby_with({"env_vars": {"A": "1"}})
    assert "py_executable" in cold.serve_options(app_env={"env_vars": {"A": "1"}})["ray_actor_options"]["runtime_env"]
    assert not cold.standby_with({"pip": ["x"]})
    runtime_env = cold.serve_options(app_env={"pip": ["x"]})["ray_actor_options"]["runtime_env"]
    assert runtime_env["pip"] == ["x"] and "py_executable" not in runtime_env


def test_a_missing_checkpoint_folder_is_refused_with_the_command_that_makes_it(tmp_path):
    missing = tmp_path / "not-built"
    with pytest.raises(ValidationError, match=r"model a/b: checkpoint folder .*not-built/blip does not exist.*make checkpoints"):
        AppArgs.model_validate({"models": [{"id": "a/b", "source": "blip", "family": "blip"}], "checkpoint_dir": str(missing)})
    with pytest.raises(ValidationError, match="does not exist"):
        AppArgs.model_validate({"models": [{"id": "a/b", "source": str(tmp_path / "nope"), "family": "blip"}]})
    hub = AppArgs.model_validate({"models": [{"id": "a/b", "source": "Salesforce/blip-x", "family": "blip"}], "checkpoint_dir": str(missing)})
    assert hub.resolve_source("Salesforce/blip-x") == "Salesforce/blip-x", "a hub id is left to the replica"
