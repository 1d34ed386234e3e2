"""Starling's runtime: key storage, the command line, and (later) the asyncio node.

This package is the thin glue around ``starling.proto``: it owns files, sockets,
the clock and the operating system's randomness, and feeds them to the cores.
"""
