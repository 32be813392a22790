"""Peers run at tiny sizes when the optional ``bench`` extra is installed, and are skipped
with a message when it is not."""

from __future__ import annotations

import builtins

import pytest

from nudge.bench import peers

TINY = peers.PeersConfig(decisions=20, seconds=0.5, batch=10, risk_users=15,
                         worlds_decisions=0)


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


def test_worlds_peers_learning_curves_side_by_side() -> None:
    """bench/worlds.py's dense world: nudge, VW (time box) and the offline fits at a tiny
    size; every learner reports a curve whose ratios are ratios."""
    from nudge.bench import peers_worlds

    out = peers_worlds.run(peers_worlds.WorldPeersConfig(
        worlds=("dense",), decisions=2_000, batch=10, vw_seconds=0.1, holdout=100))
    learners = [r["learner"] for r in out["worlds"]]
    assert learners[0].startswith("nudge")
    assert out["worlds"][0]["decisions"] == 2_000
    for r in out["worlds"]:
        for ratio in r["curve"].values():
            assert 0.0 < ratio <= 1.0 + 1e-9
    if peers.missing("sklearn") is None:
        assert sum("offline logistic" in name for name in learners) == 2
        assert set(out["worlds"][-1]["curve"]) == {"2000"}
    table = peers_worlds.format_table(out["worlds"])
    assert table.count("| dense |") == len(learners)
