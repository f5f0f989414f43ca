"""Baselines: what a release measured (`store`), how far a new run may fall behind it (`rules`), and whether it
did (`compare`)."""
