"""Offline latency benchmark: in-process stages, HTTP, and the old project's pipeline."""
