"""Simulator backends behind one env API (see sim/make.py for the registry)."""
