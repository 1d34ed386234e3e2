"""Starling's benchmarks: each runs real processes on loopback and writes JSON.

Run one with ``python -m bench NAME --json PATH``; ``python -m bench --list``
names them. Figures and how each is measured: ``bench/README.md``.
"""
