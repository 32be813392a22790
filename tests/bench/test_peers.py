"""Peers run at tiny sizes when the optional ``bench`` extra is installed, and are skipped
with a message when it is not."""

from __future__ import annotations

import builtins

import pytest

from nudge.bench import peers

TINY = peers.PeersConfig(decisions=20, seconds=0.5, batch=10, risk_users=15)


def test_nudge_always_runs_and_peers_run_or_explain_why_not() -> None:
    result = peers.run(TINY)
    names = [d["name"] for d in result["decisions"]]
    assert names[0].startswith("nudge")
    assert result["decisions"][0]["decisions"] == 20
    for name in peers.PEER_PACKAGES:
        ran = any(n.lower().startswith(name.lower().split()[0]) for n in names) or (
            name == "River" and "risk" in result)
        assert ran or name in result["skipped"], name
    for d in result["decisions"]:
        assert 0.0 <= d["reward_vs_oracle"] <= 1.0 + 1e-9


def test_missing_peer_is_skipped_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_peers(name: str, *args, **kwargs):
        if name.split(".")[0] in peers.PEER_PACKAGES.values():
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peers)
    result = peers.run(TINY)
    assert set(result["skipped"]) == set(peers.PEER_PACKAGES)
    assert all(peers.INSTALL_HINT in reason for reason in result["skipped"].values())
    assert "risk" not in result
