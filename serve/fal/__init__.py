"""fal.ai's protocol over the gateway's service layer, so the unmodified `fal_client` works against it.

- `protocol.py`: what `fal_client` (1.0.x) and fal's JavaScript client send and parse, as pydantic
  models and constants: app ids, URLs, auth, run results, queue statuses, errors, webhooks.
- `apps.py`: fal app ids (`{owner}/{model-name}/{task}`) <-> the catalog's models and tasks.
- `errors.py`: the gateway's errors in fal's error shapes.
- `runner.py`: the queue's job runner (one per ingress replica, leasing jobs from the store).
- `webhooks.py`: webhook payloads, Standard Webhooks signatures, deliveries through the address policy.
- `settings.py`: `gateway.fal` (retention, leases, runner concurrency, webhook retries and secret).

The HTTP routes are in `serve/routers/fal.py` (run) and `serve/routers/fal_queue.py` (the queue); they
call the same `GatewayService` functions as `/v1/vision/{model}/{task}`, so a fal call is the same request with the same result.
"""
