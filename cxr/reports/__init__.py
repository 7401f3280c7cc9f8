"""Radiology reports: where they come from, how they are stored, what they say."""
