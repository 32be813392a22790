"""Numba kernels: plain arrays in, plain arrays out; no I/O, no protobuf, no LMDB.

Each module has private ``@njit`` kernels with explicit signatures and ``cache=True``,
and public Python wrappers that validate inputs before calling them. Kernels that other
kernel modules call (``rng``, ``policy.insert_ranked``) carry public names.

- ``jit``: the Numba array types, JIT presets and input checks every module uses.
- ``user_state``: per-user behavioural state and the event ingestion kernel.
- ``risk``: the transaction vector (hashed categorical bins, validation) fraud kernels take.
- ``risk_model``, ``risk_model_reasons``: the calibrated fraud model (P(fraud) from a
  likelihood ratio against the customer's own history) and its reason codes.
- ``context``: raw numbers and strings to the policy's context vector.
- ``snapshot``: ``PolicySnapshot``, the read-only model deciders read.
- ``learner``: posterior updates that publish new snapshots.
- ``action_space``: a campaign's combinations as arrays.
- ``rng``: the seeded generator the policy draws from.
- ``policy``: scoring, exploration and ``decide``.
- ``contributions``: what each component and feature added to a score (reasons, explain).
- ``warmup``: calls every kernel before the server says SERVING.
"""
