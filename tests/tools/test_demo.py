"""The demo's training time budget (tools/demo.py): stop with a checkpoint before overrunning."""
import os
import types

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingCheckpointer:
    def __init__(self):
        self.saved = []

    def save(self, name, **extra):
        self.saved.append((name, extra))


def _hook(demo, budget_s, start_iter, max_iter, clock):
    hook = demo.time_budget_hook(budget_s)
    hook.trainer = types.SimpleNamespace(iter=start_iter, max_iter=max_iter, checkpointer=RecordingCheckpointer())
    demo.time.perf_counter = lambda: clock[0]
    hook.before_train()
    return hook


def test_budget_hook_stops_before_the_step_that_would_overrun(demo, monkeypatch):
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=None))
    clock = [100.0]
    hook = _hook(demo, budget_s=35.0, start_iter=0, max_iter=100, clock=clock)
    for it in range(3):  # 10 s a step: after 3 steps 30 s are spent, a 4th would end at 40 s > 35 s
        hook.trainer.iter = it
        clock[0] += 10.0
        if it < 2:
            hook.after_step()
    with pytest.raises(demo.TrainingBudgetReached) as stop:
        hook.after_step()
    assert stop.value.args == (3,)
    assert hook.trainer.checkpointer.saved == [("model_final", {"iteration": 2})]
    assert not isinstance(stop.value, Exception)  # detectron2's loop must not log it as a crash


def test_budget_hook_counts_only_this_runs_steps_and_never_stops_the_last(demo, monkeypatch):
    monkeypatch.setattr(demo, "time", types.SimpleNamespace(perf_counter=None))
    clock = [0.0]
    # resumed at iteration 50: one step of 10 s in 25 s of budget leaves room for another
    hook = _hook(demo, budget_s=25.0, start_iter=50, max_iter=100, clock=clock)
    clock[0] = 10.0
    hook.after_step()
    # the schedule's final step never raises, whatever the time
    hook.trainer.iter, clock[0] = 99, 1e6
    hook.after_step()
    assert hook.trainer.checkpointer.saved == []
