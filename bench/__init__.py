"""Benchmarks of the firehose server and plugin: see docs/performance.md."""
