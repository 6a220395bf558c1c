"""One catalog entry (`models:` in the app args) and its sections: batching, generation caps,
the Serve deployment, demand-aware autoscaling and the model page's card.

`ModelSpec.serve_options` turns an entry into its deployment's options; the application-level
args (`GatewayConfig`, `AppArgs`) are in `serve.config`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from families.registry import FAMILIES, family_of
from serve.deployment_options import (
    DEMAND_POLICY_PATH,
    REPLICA_ENV,
    SCALE_TO_ZERO_DEFAULTS,
    picks_interpreter,
    with_env,
)
from serve.errors import bad_request
from serve.standby import preloading

Status = Literal["live", "coming_soon"]


# The base of every config section, here and in serve.config: an unknown key (a typo) is an
# error rather than a setting silently ignored.
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchConfig(Strict):
    """Live-tunable batching, delivered to replicas as Serve's `user_config`.

    A model run takes everything that queued while the previous run was busy, up to
    `max_batch_size` items of work: one per image, one per text (SigLIP2 texts, labels and score
    texts). A request carrying more is split over several runs where its family can split it
    (embeddings, scores); one that cannot be split (a classification with many labels) runs alone.
    """

    max_batch_size: int = Field(8, ge=1, le=256, description="items of work (images and texts) per model run")
    fill_wait_ratio: float = Field(
        0.05,
        ge=0,
        le=0.5,
        description="before a batch that is not full, wait for more requests for at most this fraction of the"
        " previous model run's duration (0: never wait)",
    )

    @model_validator(mode="before")
    @classmethod
    def _removed_settings(cls, data: Any) -> Any:
        # Batches used to queue in Serve's `@serve.batch` and then in the coalescer, each with its
        # own wait; there is one queue and one wait setting now.
        if isinstance(data, dict) and "batch_wait_timeout_s" in data:
            data = dict(data)
            if data.pop("batch_wait_timeout_s") not in (0, 0.0, None):
                raise ValueError(
                    "batching.batch_wait_timeout_s was removed: a batch waits for more requests at most"
                    " fill_wait_ratio of the previous run's duration; set fill_wait_ratio instead"
                )
        return data


class GenerationConfig(Strict):
    """Defaults and server-side caps for generation settings a request may ask for."""

    max_new_tokens: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    max_new_tokens_cap: int = Field(1024, ge=1)
    num_beams_cap: int = Field(5, ge=1)

    def check(self, max_new_tokens: int | None, num_beams: int | None, tokens_param: str = "max_tokens") -> None:
        """A 400 naming the setting a request asks above its cap; unset settings pass."""
        if max_new_tokens is not None and max_new_tokens > self.max_new_tokens_cap:
            raise bad_request(f"{tokens_param} must be at most {self.max_new_tokens_cap}", param=tokens_param)
        if num_beams is not None and num_beams > self.num_beams_cap:
            raise bad_request(f"num_beams must be at most {self.num_beams_cap}", param="num_beams")

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> GenerationConfig:
        if self.max_new_tokens > self.max_new_tokens_cap:
            raise ValueError("generation.max_new_tokens must not exceed generation.max_new_tokens_cap")
        if self.num_beams > self.num_beams_cap:
            raise ValueError("generation.num_beams must not exceed generation.num_beams_cap")
        return self


class DemandPolicy(Strict):
    """Opt-in demand-aware autoscaling (`serve.autoscaling.DemandAwarePolicy`) for an autoscaled model.

    Interest signals are `POST /v1/models/{id}/interest` calls counted in the store (`gateway.database_url`).
    """

    interest_window_s: float = Field(3600.0, gt=0, description="interest older than this does not count")
    prewarm_interest: int | None = Field(
        None, ge=1, description="wake a model at zero replicas when this much interest arrived within the window"
    )
    keep_warm_interest: int | None = Field(
        None, ge=1, description="keep one replica of a running model while this much interest is within the window"
    )
    refresh_s: float = Field(10.0, ge=0, description="how often the controller re-reads the demand counts")

    @model_validator(mode="after")
    def _hysteresis(self) -> DemandPolicy:
        if (
            self.prewarm_interest is not None
            and self.keep_warm_interest is not None
            and self.keep_warm_interest > self.prewarm_interest
        ):
            raise ValueError("demand_policy.keep_warm_interest must not exceed demand_policy.prewarm_interest")
        return self


class DeploymentConfig(Strict):
    """The Serve options of one model's deployment."""

    name: str | None = None
    num_replicas: int | None = Field(None, ge=0)
    autoscaling_config: dict[str, Any] | None = None
    max_ongoing_requests: int = Field(16, ge=1)
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        description="requests the ingress's handle may hold waiting for a replica slot (-1: no bound); past it"
        " the gateway answers 503 with Retry-After. Requests that arrive while the model has no replica (a"
        " cold start: all of them wait in this queue) are not shed: the ingress sends a rejected one again"
        " until it gets a place or its cold-start timeout passes. The bound is per calling ingress replica"
        " (each has its own router).",
    )
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    health_check_period_s: float | None = None
    graceful_shutdown_timeout_s: float | None = None
    max_constructor_retry_count: int | None = Field(
        None, ge=1, description="failed replica starts (e.g. weights that do not load) before the deployment is failed"
    )


# Links end up in `href`s of the model pages: plain http(s) URLs only, never `javascript:` or `data:`.
WEB_URL_PATTERN = r"^https?://[^\s<>\"'`]+$"


class Benchmark(Strict):
    """One published result, shown with its source on the model's page. Copy it from the source; never estimate."""

    benchmark: str = Field(min_length=1, description="e.g. COCO Captions (Karpathy test)")
    metric: str = Field(min_length=1, description="e.g. CIDEr, mAP, top-1 accuracy (%)")
    value: float
    source: str = Field(min_length=1, description="where the figure is published: paper or model card")
    url: str | None = Field(None, pattern=WEB_URL_PATTERN, description="link to the source (http or https)")


class Link(Strict):
    title: str = Field(min_length=1)
    url: str = Field(pattern=WEB_URL_PATTERN)


class CardInfo(Strict):
    """`card:` of a catalog entry: what the model's page (`/models/{id}`) says beyond the catalog fields."""

    description: str = ""
    specs: dict[str, str] = Field(default_factory=dict, description="key facts, shown as a table in this order")
    benchmarks: list[Benchmark] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)


class ModelSpec(Strict):
    """One catalog entry: what is served under `id`, from which checkpoint, and how it is deployed."""

    id: str = Field(min_length=1)
    source: str = Field(min_length=1, description="checkpoint: a hub id or a local directory")
    family: str = Field(description="a registered family (families/registry.py, or `families:` in the app args)")
    status: Status = "live"
    license: str | None = None
    parameters: int | None = Field(None, ge=0, description="parameter count")
    price_per_1k_images: float | None = Field(None, ge=0)
    owned_by: str | None = None
    created: int = 1700000000
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int | None = Field(None, ge=1)
    cpu_thread_wait: Literal["spin", "passive"] = Field(
        "spin",
        description="what idle torch CPU threads do between operations: spin briefly, then sleep (OpenMP's"
        " default, best for real-size models), or sleep at once (OMP_WAIT_POLICY=PASSIVE: for models whose"
        " forward takes milliseconds, so spinning threads do not take the cores from the ingress and proxy)",
    )
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    batching: BatchConfig = Field(default_factory=BatchConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="family-specific settings")
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    cold_start_timeout_s: float | None = Field(
        None, gt=0, description="how long a request may wait for this model to start (default: the gateway's)"
    )
    demand_policy: DemandPolicy | None = Field(None, description="demand-aware autoscaling (opt-in)")
    card: CardInfo | None = Field(None, description="the model page's description, specs, benchmarks and links")
    standby_worker: bool = Field(
        True,
        description="while this model has no replica, keep one idle worker process per node that has already"
        " imported the model code, so a cold start skips ~5 s of imports (serve/standby.py). Costs ~420 MB of"
        " memory per node while the model is cold, no CPU, GPU or Ray resources. Only for models that scale"
        " to zero.",
    )

    @property
    def deployment_name(self) -> str:
        return self.deployment.name or slug(self.id)

    @property
    def tasks(self) -> list[str]:
        return [task.name for task in family_of(self.family).tasks]

    @model_validator(mode="after")
    def _check_family(self) -> ModelSpec:
        if self.family not in FAMILIES:
            raise ValueError(
                f"model {self.id}: unknown family '{self.family}'; known: {', '.join(sorted(FAMILIES))}"
                " (a family of your own is named by import path under `families:` in the app args)"
            )
        try:
            family_of(self.family).options.model_validate(self.options)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg'].removeprefix('Value error, ')}"
                for e in error.errors()
            )
            raise ValueError(f"model {self.id}: options: {problems}") from None
        return self

    @model_validator(mode="after")
    def _check_deployment(self) -> ModelSpec:
        dep = self.deployment
        if dep.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"model {self.id}: deployment.max_ongoing_requests ({dep.max_ongoing_requests}) must be"
                f" >= batching.max_batch_size ({self.batching.max_batch_size}) or batches never fill"
            )
        if dep.num_replicas is not None and dep.autoscaling_config is not None:
            raise ValueError(f"model {self.id}: set num_replicas or autoscaling_config, not both")
        if self.status == "live" and self.min_replicas < 1:
            raise ValueError(f"model {self.id}: a live model needs at least one replica")
        if self.demand_policy is not None:
            if dep.num_replicas is not None or (self.status == "live" and dep.autoscaling_config is None):
                raise ValueError(
                    f"model {self.id}: demand_policy needs an autoscaled deployment, not a fixed num_replicas"
                )
            if "policy" in (dep.autoscaling_config or {}):
                raise ValueError(f"model {self.id}: set demand_policy or autoscaling_config.policy, not both")
        if self.uses_standby:
            chosen = picks_interpreter(dep.ray_actor_options.get("runtime_env"))
            if chosen:
                raise ValueError(
                    f"model {self.id}: standby_worker needs Ray's default Python, but"
                    f" ray_actor_options.runtime_env sets {', '.join(chosen)}; set standby_worker: false"
                )
        return self

    @property
    def uses_standby(self) -> bool:
        """Whether a standby worker is kept for this model: asked for, and the model can be at zero replicas."""
        return self.standby_worker and self.min_replicas == 0

    @property
    def thread_env(self) -> dict[str, str]:
        # Only "passive" sets anything: OMP_WAIT_POLICY=ACTIVE would make idle threads spin for minutes.
        return {"OMP_WAIT_POLICY": "PASSIVE"} if self.cpu_thread_wait == "passive" else {}

    @property
    def min_replicas(self) -> int:
        if self.deployment.num_replicas is not None:
            return self.deployment.num_replicas
        if self.deployment.autoscaling_config is not None:
            # a coming-soon model's autoscaling_config is applied over SCALE_TO_ZERO_DEFAULTS
            defaults = SCALE_TO_ZERO_DEFAULTS if self.status == "coming_soon" else {}
            return int({**defaults, **self.deployment.autoscaling_config}.get("min_replicas", 1))
        return 0 if self.status == "coming_soon" else 1

    def standby_with(self, app_env: dict[str, Any] | None) -> bool:
        """Whether this model gets a standby worker inside an application whose runtime_env is `app_env`."""
        return self.uses_standby and not picks_interpreter(app_env)

    def serve_options(
        self, source: str | None = None, demand_db: str | None = None, app_env: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of `Deployment.options` for this model.

        `demand_db`: the database URL, for `demand_policy`; `app_env`: the application's runtime_env, merged into the
        replicas' (Serve would otherwise drop it for a deployment that sets its own).
        """
        dep = self.deployment
        options: dict[str, Any] = {
            "name": self.deployment_name,
            "max_ongoing_requests": dep.max_ongoing_requests,
            "max_queued_requests": dep.max_queued_requests,
            "ray_actor_options": with_env(dep.ray_actor_options, {**REPLICA_ENV, **self.thread_env}, app_env),
            "user_config": self.batching.model_dump(),
        }
        if dep.num_replicas is not None:
            options["num_replicas"] = dep.num_replicas
        elif self.status == "coming_soon":
            options["autoscaling_config"] = {**SCALE_TO_ZERO_DEFAULTS, **(dep.autoscaling_config or {})}
        elif dep.autoscaling_config is not None:
            options["autoscaling_config"] = dict(dep.autoscaling_config)
        else:
            options["num_replicas"] = 1
        if self.demand_policy is not None:
            options["autoscaling_config"]["policy"] = {
                "policy_function": DEMAND_POLICY_PATH,
                "policy_kwargs": {"model_id": self.id, "database_url": demand_db, **self.demand_policy.model_dump()},
            }
        if self.standby_with(app_env):
            options["ray_actor_options"] = preloading(options["ray_actor_options"])
        for key in ("health_check_period_s", "graceful_shutdown_timeout_s", "max_constructor_retry_count"):
            if getattr(dep, key) is not None:
                options[key] = getattr(dep, key)
        return options


def slug(model_id: str) -> str:
    """The short name of a model id: `microsoft/Florence-2-large` -> `florence-2-large`."""
    return re.sub(r"[^a-z0-9.-]+", "-", model_id.rsplit("/", 1)[-1].lower()).strip("-")
