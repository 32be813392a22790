"""Numba kernels: plain arrays in, plain arrays out; no I/O, no protobuf, no LMDB.

Each module has private ``@njit`` kernels with explicit signatures and ``cache=True``,
and public Python wrappers that validate inputs before calling them.
"""
