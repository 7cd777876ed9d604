"""Evaluations of builtin models that need a trained model (imported lazily by pipelines.evaluate)."""
