"""What tests share, in one place; fixtures stay in the conftests and call into here.

- ``proxy``: the real proxy as a ``tokenyard serve`` subprocess (``start_proxy``, ``running_proxy``), the CLI.
- ``config``: the keys and backend sections a test proxy's config is made of.
- ``simulators``: simulators as upstreams, in the test's loop, and their control API.
- ``stores``: the ``sqlite:///`` URL, fresh Redis prefixes, where a proxy meters (``ProxyStore``), and the
  factories the store contract suites open stores with.
- ``redis_servers``: the machine's Redis, and private ``redis-server``/Cluster processes to stop and start.
- ``clocks``: the one ``FakeClock``, and the simulator's ``GatedClock``.
- ``usage_records``: what the meter writes to its store (aggregate keys, flush batches, accruals, records).
- ``jobs``: async-track jobs and their answers, as the job stores take them.
- ``contracts``: contract mixins run by more than one store family (``LifecycleContract``).
- ``async_track``: the queue tests' usual proxy, posting and polling jobs, the Batch API through the SDK.
- ``receiver``: a loopback HTTP server that keeps the POSTs it gets (callbacks).
- ``polling``, ``net``: ``eventually``; free loopback ports.
"""
