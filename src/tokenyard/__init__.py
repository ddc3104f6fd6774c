"""tokenyard: an OpenAI-compatible inference proxy and cost meter."""

__version__ = "0.1.0"
