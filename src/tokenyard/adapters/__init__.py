"""Upstream protocol clients. They speak one upstream protocol well and know nothing of tenants,
prices or routing."""
