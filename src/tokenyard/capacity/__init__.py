"""Capacity: what each dedicated backend can really serve within its latency SLA, and how many replicas to
run.

- ``settings.py``: the ``sla:``, ``metrics_url:``/``engine:`` backend fields and the ``capacity:`` section;
- ``observed.py``: ``LatencySample``, one answered request's latencies, which the proxy hands to
  ``Backend.observe`` (the limit and the envelope learn from it);
- ``limiter.py``: the adaptive concurrency limit learned from the SLA;
- ``engine.py`` / ``scraper.py``: the engines' own Prometheus metrics, scraped off the request path;
  ``truth.py`` meters what they report;
- ``envelope.py`` / ``envelope_keeper.py``: the measured concurrency → throughput curve, per request shape,
  merged across replicas for the advisor;
- ``desired.py`` / ``planner.py`` / ``actuator.py`` / ``shared_replicas.py``: the replicas to run, decided
  by one leader, published, optionally applied, and followed by every proxy replica.

Below the proxy, the advisor and telemetry; it may use adapters (scraping, webhooks), the meter and the
stores.
"""
