"""Capacity: what each dedicated backend can really serve within its latency SLA, and how many replicas to
run.

- ``settings.py``: the ``sla:``, ``metrics_url:``/``engine:`` backend fields and the ``capacity:`` section;
- ``observed.py``: ``LatencySample`` (one answered request's latencies) and ``BackendCapacity``, the per
  backend state the proxy feeds and routing reads;
- ``limiter.py``: the adaptive concurrency limit learned from the SLA;
- ``engine.py`` / ``scraper.py``: the engines' own Prometheus metrics, scraped off the request path;
- ``envelope.py``: the measured concurrency → throughput curve, per request shape, for the advisor;
- ``desired.py`` / ``actuator.py``: the replicas to run, published and optionally applied.

Below the proxy, the advisor and telemetry; it may use adapters (scraping, webhooks), the meter and the
stores.
"""
