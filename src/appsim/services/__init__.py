"""Pure services: similarity, prediction, experimentation, drift."""
