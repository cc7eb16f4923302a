"""Outgoing webhooks to tenants, on Standard Webhooks 1.0 (docs/webhooks.md).

- :mod:`~saas.webhooks.catalogue`: the event types and the JSON Schemas of their ``data``;
- :mod:`~saas.webhooks.events`: :func:`~saas.webhooks.events.emit`, called in the transaction
  of each change (one outbox row per event), and audit streaming;
- :mod:`~saas.webhooks.delivery`: fan-out, attempts, the retry schedule, disabling, retention
  (framework-free; the worker's handlers are :mod:`saas.worker.webhooks`);
- :mod:`~saas.webhooks.egress`: safe egress (https, public addresses pinned, no redirects,
  timeout, size cap) on :mod:`saas.auth.outbound`;
- :mod:`~saas.webhooks.signing`: secrets (sealed at rest) and signatures (``standardwebhooks``);
- :mod:`~saas.webhooks.endpoints` and :mod:`~saas.webhooks.views`: the API;
- :mod:`~saas.webhooks.models`: the control-plane tables; :mod:`~saas.webhooks.cli`: ``saas webhooks``.
"""
