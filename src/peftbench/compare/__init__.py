"""Fair comparison: statistics over seeds and test examples (budgets, LR selection and sweeps to come)."""
