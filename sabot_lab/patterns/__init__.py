"""The three streaming patterns, each a function that builds a job from parameters."""
