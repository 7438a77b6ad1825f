"""Shared core of the apps: prompt format, model loading and generation."""
