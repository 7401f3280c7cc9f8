"""Triton, seen from our side: one client layer for the gateway and the index builds alike.

request: the connection's arguments, the admin header, the input tensors. errors: one family of
Triton errors and the translation of tritonclient's. pool: several endpoints balanced, with ejection,
re-admission and retry. client: the asyncio client over the pool (the gateway's). sync_client: the same
client for synchronous callers (index builds, benchmarks). server_process: start and wait for a local
tritonserver.
"""
