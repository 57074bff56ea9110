"""Benchmarks of mqlite against Redis Streams and embedded peers (see README.md).

Run ``python -m benchmarks`` from the repository root; codec micro-benchmarks
run with ``pytest benchmarks/test_micro_codec.py``.
"""
