"""tokenyard's benchmarks (not tests: timings belong here, never in the test suite)."""
