"""Noise schedules, DDIM with eps / v prediction, classifier-free guidance (pure functions)."""
