"""Runtime: execute a compiled SNN over T timesteps and report spikes, SOPs and energy."""

from .session import BatchResult, SNNSession, split_static_prologue

__all__ = ["SNNSession", "BatchResult", "split_static_prologue"]
