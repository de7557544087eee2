"""Scripted experts on privileged state (demos for pretraining, sanity checks)."""
