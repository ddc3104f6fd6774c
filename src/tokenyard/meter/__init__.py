"""Metering: every request's usage and cost, aggregated in memory and flushed to a store in batches."""
