"""Parallel layouts: the (tp, pp, dp) object, TP wiring and pipeline stages. Imports the model, never the reverse."""
