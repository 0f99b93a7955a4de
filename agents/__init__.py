"""Routers, baselines, the oracle and their evaluation for BudgetRoute."""
