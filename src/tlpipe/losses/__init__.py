"""Distillation losses, one per module."""
