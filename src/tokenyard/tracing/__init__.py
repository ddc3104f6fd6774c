"""OpenTelemetry traces of the request path and the async track: what goes in a span (``spans.py``) and
how spans leave the process, in batches, off the request path (``export.py``)."""
