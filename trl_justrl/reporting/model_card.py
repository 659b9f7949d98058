"""The recipe part of the model card: recipe values, base model, data and the training metrics so far.

TRL writes its card (README.md in the output folder) at every checkpoint, and `hub_strategy: every_save` pushes it
with the weights; `GRPORunTrainer.create_model_card` (JustRLTrainer's too) inserts this section into it. Only
named, non-secret settings are listed (never tokens).
"""

from __future__ import annotations

from typing import Any

from ..setting_roles import card_rows
from .history import format_value

SECTION_TITLE = "## Training recipe"
JUSTRL_INTRO = ("Trained with [trl-justrl](https://arxiv.org/abs/2512.16649): single-stage GRPO with the JustRL "
                "objective (clip-higher, dual-clip, token-mean loss, no KL, no entropy bonus) and the rewards below.")
GRPO_INTRO = "Trained with trl-justrl's `trainer: grpo` path: TRL's GRPOTrainer and its objective, unchanged."

# (column, log key) of the metrics table
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("reward", "reward"),
    ("accuracy", "accuracy"),
    ("entropy", "entropy"),
    ("mean length", "completions/mean_length"),
    ("clip high", "clip_ratio/high_mean"),
    ("dual clip", "clip_ratio/dual_mean"),
)
MAX_METRIC_ROWS = 12


def _metric_rows(log_history: list[dict[str, Any]], updates_per_step: int) -> list[str]:
    logged = [h for h in log_history if "reward" in h and "step" in h]
    if len(logged) > MAX_METRIC_ROWS:  # first, then the most recent ones
        logged = [logged[0], *logged[-(MAX_METRIC_ROWS - 1) :]]
    rows = []
    for entry in logged:
        step = entry["step"] / updates_per_step if updates_per_step else entry["step"]
        cells = [f"{step:g}", *(format_value(entry.get(key), missing='-') for _, key in METRIC_COLUMNS)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def recipe_card_section(
    args: Any,
    *,
    base_model: str | None,
    dataset_name: str | None,
    reward_names: list[str],
    log_history: list[dict[str, Any]],
    global_step: int,
    resume_changes: list[dict[str, Any]] | None = None,
) -> str:
    """Markdown for the model card: what was trained, with which recipe values, and how training went so far."""
    geometry = getattr(args, "batch_geometry", None)
    updates = geometry.updates_per_step if geometry is not None else 1
    justrl = getattr(args, "clip_ratio_c", None) is not None  # JustRLConfig's own field
    lines = [
        SECTION_TITLE,
        "",
        JUSTRL_INTRO if justrl else GRPO_INTRO,
        "",
        f"- Base model: `{base_model or 'unknown'}`",
        f"- Training data: `{dataset_name or 'unknown'}`",
        f"- Rewards: {', '.join(f'`{r}`' for r in reward_names) or 'unknown'}",
        f"- Progress: {global_step} optimizer updates = {global_step / updates:g} training steps "
        f"({updates} updates per step)",
    ]
    if geometry is not None:
        lines.append(
            f"- Batch: {geometry.completions_per_step} completions per step on {geometry.world_size} training "
            f"processes (micro-batch {geometry.per_device_train_batch_size}, gradient accumulation "
            f"{geometry.gradient_accumulation_steps})"
        )
    for resumed in resume_changes or ():  # settings changed on a resume (resume_allow_changes): not one recipe
        lines.append(f"- Resumed at update {resumed.get('resumed_at_step')} with changed settings: "
                     + "; ".join(f"`{change}`" for change in resumed.get("changes", [])))
    lines += ["", "| recipe value | setting |", "| --- | --- |"]
    lines += [f"| {label} | {format_value(getattr(args, attr, None), missing='-')} |"
              for label, attr in card_rows() if hasattr(args, attr)]
    rows = _metric_rows(log_history, updates)
    lines += ["", "### Training metrics so far", ""]
    if rows:
        lines.append("| training step | " + " | ".join(c for c, _ in METRIC_COLUMNS) + " |")
        lines.append("| --- " * (len(METRIC_COLUMNS) + 1) + "|")
        lines += rows
    else:
        lines.append("No metrics logged yet.")
    return "\n".join(lines) + "\n"


def insert_section(card: str, section: str) -> str:
    """Put `section` into a card, replacing an earlier version of it, before the citations when there are some."""
    if SECTION_TITLE in card:
        start = card.index(SECTION_TITLE)
        rest = card[start + len(SECTION_TITLE) :]
        end = rest.find("\n## ")
        card = card[:start] + (rest[end + 1 :] if end >= 0 else "")
    marker = card.find("\n## Citations")
    if marker >= 0:
        return card[: marker + 1] + section + "\n" + card[marker + 1 :]
    return card.rstrip("\n") + "\n\n" + section
