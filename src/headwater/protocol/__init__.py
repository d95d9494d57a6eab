"""Headwater's sans-I/O protocol core: typed events and resources, SSE codec, accumulator, checker, writer.

Nothing here imports an HTTP library, an event loop or a database driver.
"""
