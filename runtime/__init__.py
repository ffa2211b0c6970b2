"""Runtime: execute a compiled SNN over T timesteps and report spikes, SOPs and energy."""

from .report import summarize
from .runner import run_dataset
from .session import BatchResult, SNNSession, split_static_prologue

__all__ = ["SNNSession", "BatchResult", "split_static_prologue", "run_dataset", "summarize"]
