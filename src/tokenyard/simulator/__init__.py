"""A stand-in OpenAI-compatible upstream for the quick start, tests and benchmarks.

Serverless or dedicated latency models, deterministic output under a seed, injected faults, and control
endpoints under ``/sim/``. It imports nothing of the service or the adapters (only
``tokenyard.wire`` and ``tokenyard.errors``).

Import what you need from its modules (``config``, ``app``, ``server``): importing the package itself
stays cheap.
"""
