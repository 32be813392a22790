"""EraseUser: store what the engines hold back (pending decisions, the risk overlay),
erase the user in one transaction (``storage/erasure.py``), drop what they cache."""

from __future__ import annotations

from nudge.server.decisions.engine import DecisionEngine
from nudge.server.risk.engine import RiskEngine
from nudge.server.storage.erasure import Erasure, erase_user


def erase(decisions: DecisionEngine, risk: RiskEngine, user_id: str) -> Erasure:
    """Erase ``user_id`` (the stored id: a pseudonym when ids are pseudonymised)."""
    decisions.flush()
    risk.flush()
    erased = erase_user(risk.writer, user_id)
    risk.forget_user(user_id)
    return erased
