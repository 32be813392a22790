"""One module per table of the store: each owns its database name, how its keys are built
and parsed, and how its values are encoded and decoded. Nothing else touches those bytes.

Every function takes the transaction and the store's ``dbs`` (name -> database handle,
from ``Store`` or ``ReadOnlyStore``).

- ``meta``: the schema version and the event type registry.
- ``users``: per-user state records (``users``) and profiles (``profiles``).
- ``events``: the event log (``events``) and the seen event ids (``seen``).
- ``decisions``: decision records (audit trail and learner input).
- ``open_decisions``: decisions awaiting their goal, by user (``open``).
- ``deadlines``: decisions by the end of their goal window, for expiry.
- ``rewards``: settled decisions in order, the learner's input log.
- ``models``: learned policy snapshots, and the rewards position they learned to.
- ``contacts``: a user's recent contacts (the frequency caps' input).
- ``deliveries``: the outbox's deliveries, its due-time index (``outbox``) and their
  index by user (``user_deliveries``).
- ``transactions``: scored transactions (ScoreTransaction's idempotency and labels).
- ``risk_baselines``: per-user risk baselines (``risk``), the population baseline and the
  times a user's transaction was held.
- ``triggered``: journey triggers that fired and await their decision.
- ``insights``: per-user insights summaries and their key registry.

``keys`` holds the key layouts several tables share (time-ordered keys, owner + NUL + id).
"""
