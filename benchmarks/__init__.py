"""Benchmarks: the gateway against the raw model and the servers a user would pick instead.

`make bench` (or `python -m benchmarks.run`) builds real-size random-weight checkpoints, measures
every system in interleaved rounds and writes `benchmarks/results/latest.{json,md,png}`.
"""
