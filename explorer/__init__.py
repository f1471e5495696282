"""Compression Explorer: see and tune neural-network compression layer by layer."""

__version__ = "0.1.0"
