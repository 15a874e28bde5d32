"""The comparison study: equal budgets, a learning-rate search per method on validation, seeds scored on test."""
