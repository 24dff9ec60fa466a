"""Bridges: where a fleet meets systems its operators already run (AMQP and MQTT brokers,
PostgreSQL, Telegram). Each is off unless its `[bridges.<name>]` table is configured, and
imported only then, so a node without bridges keeps its embedded defaults and stays small.

The contract every bridge keeps (`model.py`):
- it is a `Bridge`: a `Service` (async context manager, idempotent start/stop) built by a
  factory from its config section and the node's `BridgeContext`;
- it reports a `BridgeStatus` (connected, lag, outbox depth, errors) that `/api/vsm`,
  `/metrics` and events show;
- an outage is never a crash of the node: it reconnects on its own, and reports the
  outage as pain on the algedonic channel (`BridgeContext.pain`).

`service.py` starts the configured bridges and gathers their statuses; `registry.py`
names the module of each bridge so it is imported only when configured.
"""
