"""Insights over a cluster: every node's summaries as one population (cluster mode).

Each node stores the insights summaries of the users of the partitions it owns, and names
summary keys (event types, flow steps) by ids of its own store. An analysis of the bank's
whole base gathers each partition's users from its owner (``ClusterService.ReadSummaries``)
and joins them here: entries carry absolute hours, so a user's entries need no change but
their key ids, which are mapped by name onto one table. A user lives in one partition, so
no user comes twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nudge.server.offline.insights import Population, from_entries
from nudge.server.storage.tables.insights import ENTRY

MAX_KEYS = 65_536  # key ids are 16-bit


@dataclass(frozen=True)
class SummaryPart:
    """Some users' summaries as one node holds them: its key names by id, entries per
    user, and the entries (``tables.insights.ENTRY`` records)."""

    key_names: Sequence[str]
    entry_counts: np.ndarray
    entries: np.ndarray


def part_from_bytes(key_names: Sequence[str], entry_counts: bytes, entries: bytes
                    ) -> SummaryPart:
    """A part as ReadSummaries sends it, checked: the counts must add up to the entries
    and every key id must be named."""
    counts = np.frombuffer(entry_counts, "<u4")
    if len(entries) % ENTRY.itemsize:
        raise ValueError(f"entries: {len(entries)} bytes is not whole {ENTRY.itemsize}-byte "
                         "entries")
    found = np.frombuffer(entries, ENTRY)
    if int(counts.sum()) != found.size:
        raise ValueError(f"entry_counts add up to {int(counts.sum())}, "
                         f"not the {found.size} entries sent")
    if found.size and int(found["key"].max()) >= len(key_names):
        raise ValueError(f"entries name key {int(found['key'].max())}, "
                         f"of {len(key_names)} named")
    return SummaryPart(list(key_names), counts, found)


def merge_parts(parts: Sequence[SummaryPart]) -> Population:
    """One population of every part's users, key ids mapped by name onto one table."""
    ids: dict[str, int] = {}
    all_counts: list[np.ndarray] = []
    all_entries: list[np.ndarray] = []
    for part in parts:
        remap = np.array([ids.setdefault(name, len(ids)) for name in part.key_names],
                         dtype=np.int64)
        if len(ids) > MAX_KEYS:
            raise ValueError(f"more than {MAX_KEYS} summary keys across the cluster")
        entries = np.array(part.entries, dtype=ENTRY)  # a writable copy
        if entries.size:
            entries["key"] = remap[entries["key"].astype(np.int64)]
        all_counts.append(np.asarray(part.entry_counts, np.int64))
        all_entries.append(entries)
    counts = np.concatenate(all_counts) if all_counts else np.zeros(0, np.int64)
    offsets = np.zeros(counts.size + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    entries = np.concatenate(all_entries) if all_entries else np.empty(0, ENTRY)
    return from_entries(offsets, entries, ids)
