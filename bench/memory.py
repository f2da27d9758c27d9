"""Placeholder.

Run: x
"""
