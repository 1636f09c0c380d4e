"""Test doubles that ship with the package (the Optuna pattern): fake servers for tests and
benchmarks. Nothing in the optimizer imports this package."""
