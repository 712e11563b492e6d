"""Benchmark task definitions: how each public dataset's records become (context, continuation) requests."""
