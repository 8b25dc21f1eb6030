"""Benchmark: V1Chat through the whole emulator against a bare gRPC echo of the same method.

Run from the project root with ``python -m bench`` (or ``make bench``); ``--help`` lists the flags.
"""
