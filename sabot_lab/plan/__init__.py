"""Logical plans: immutable nodes and the JobGraph."""
