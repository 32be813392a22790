"""``nudge explain DECISION_ID``: why this combination, and why not the next one.

Reads the decision's audit record from the data folder (read-only: safe beside a running
server) — model version, seed, features, guardrail trace, propensity, the ranked
alternatives — and breaks the chosen and the next-ranked combination into their model
components with the stored model, naming the components and features that separate them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nudge.kernels.contributions import explain as explain_combo
from nudge.server.decisions.campaign import load_campaigns
from nudge.server.decisions.models import CampaignModel, fit_stored
from nudge.server.storage.readonly import open_readonly
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables import models as model_table
from nudge.server.storage.tables.decisions import DecisionRecord


def explain(data_dir: Path, decision_id: str, campaigns_dir: Path | None = None) -> str:
    with open_readonly(data_dir) as store, store.read() as txn:
        record = decision_table.get(txn, store.dbs, decision_id)
        if record is None:
            raise KeyError(f"decision_id: {decision_id!r} is not in {data_dir}")
        campaign = load_campaigns(campaigns_dir)[record.campaign]
        initial = CampaignModel.initial(campaign)
        stored = model_table.get(txn, store.dbs, record.campaign)
        model = initial
        if stored is not None:
            model = fit_stored(stored, initial, model_table.learned_seq(txn, store.dbs)) or initial
    return render(record, model)


def render(record: DecisionRecord, model: CampaignModel) -> str:
    campaign = model.campaign
    components = campaign.component_names()
    features = model.layout.feature_names()
    lines = [
        f"decision {record.decision_id} · campaign {record.campaign} · model "
        f"{record.model_version} · seed {record.seed}",
        f"status {record.status}" + (f", reward {record.reward:g}" if record.reward is not None
                                     else "")
        + f" · propensity {record.propensity:.4g}"
        + (f" ({record.propensity_samples} draws)" if record.propensity_samples else
           " (exact)"),
    ]
    if record.trace:
        lines.append("guardrails:")
        lines += [f"  {code}: {detail}" for code, detail in record.trace]
    if record.suppressed:
        lines.append(f"suppressed: {record.suppressed}")
    if model.version != record.model_version:
        lines.append(f"(scores below use the stored model {model.version}; the decision "
                     f"used {record.model_version})")
    x = np.asarray(record.x, dtype=np.float64)
    # raw holds the numeric features, which follow the bias in the layout.
    named = [(features[j + 1], v) for j, v in enumerate(record.raw) if v is not None]
    if named:
        lines.append("features: " + ", ".join(f"{n}={v:.4g}" for n, v in named))

    def parts(combo: int) -> dict[str, float]:
        why = explain_combo(model.snapshot, campaign.space, x, combo, top_features=0)
        return {components[c]: s for c, s in zip(why.components.tolist(),
                                                 why.component_scores.tolist(), strict=True)}

    ranked = [c for c in record.top if c >= 0]
    if not ranked:
        return "\n".join(lines)
    chosen = parts(record.choice)
    lines.append(f"chosen: {_describe(campaign, record.choice)} · score "
                 f"{sum(chosen.values()):+.4f}")
    lines += [f"  {name}: {value:+.4f}" for name, value in
              sorted(chosen.items(), key=lambda kv: -abs(kv[1]))]
    nxt = next((c for c in ranked if c != record.choice), None)
    if nxt is not None:
        other = parts(nxt)
        lines.append(f"next: {_describe(campaign, nxt)} · score {sum(other.values()):+.4f}")
        diff = {k: chosen.get(k, 0.0) - other.get(k, 0.0) for k in {*chosen, *other}}
        separating = [(k, v) for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))
                      if abs(v) > 1e-12][:5]
        if separating:
            lines.append("why not the next one (chosen minus next, by component):")
            lines += [f"  {name}: {value:+.4f}" for name, value in separating]
        else:
            lines.append("why not the next one: the model scores them alike; the draw "
                         "(exploration) decided")
    return "\n".join(lines)


def _describe(campaign, combo: int) -> str:
    values = campaign.combo_values(combo)
    if values is None:
        return "send nothing"
    m, ch, st, fr, off = values
    return (f"{campaign.messages[m].name} by {campaign.channels[ch]} at "
            f"{campaign.send_times[st].name}, {campaign.frequencies[fr].name}, offer "
            f"{campaign.offers[off].name}")


def main(data_dir: str, decision_id: str, campaigns_dir: str | None) -> int:
    try:
        print(explain(Path(data_dir), decision_id, Path(campaigns_dir) if campaigns_dir
                      else None))
    except (KeyError, FileNotFoundError) as exc:
        print(f"nudge explain: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["explain", "main"]
