"""What people watch while `modelport train` runs: a live table on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from modelport.cli import train_cmd
from modelport.training.trainer import format_seconds, row_line

ROWS = [{"step": 1, "max_steps": 40, "loss": 7.25, "learning_rate": 2e-4, "tokens_per_s": 1234.5, "eta_s": 3725.0},
        {"step": 10, "max_steps": 40, "loss": 3.5, "eval_loss": 3.75, "learning_rate": 1.5e-4, "tokens_per_s": 1300.0,
         "eta_s": 65.0}]


def test_a_terminal_gets_a_live_table_with_every_column(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(train_cmd, "console", Console(file=screen, force_terminal=True, width=120, color_system=None))
    with train_cmd.TrainingView(live=True) as view:
        for row in ROWS:
            view(row)
    shown = screen.getvalue()
    for header in ("step", "loss", "eval loss", "learning rate", "tokens/s", "ETA"):
        assert header in shown
    last = shown[shown.rindex("step"):]               # the final frame: both rows, in their columns
    assert "1/40" in last and "10/40" in last and "3.7500" in last and "1:05" in last and "1:02:05" in last


def test_elsewhere_one_plain_line_a_step(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(train_cmd, "console", Console(file=screen, width=200, color_system=None))
    with train_cmd.TrainingView(live=False) as view:
        for row in ROWS:
            view(row)
    assert screen.getvalue().splitlines() == [row_line(r) for r in ROWS]
    assert row_line(ROWS[1]) == "step     10/40  loss 3.5000  eval loss 3.7500  lr 1.50e-04  1,300 tok/s  ETA 1:05"
    assert format_seconds(3725) == "1:02:05" and format_seconds(59.6) == "1:00"
