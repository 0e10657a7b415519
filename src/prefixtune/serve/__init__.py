"""Serving many adapters of one frozen model over an OpenAI-compatible HTTP API."""
