"""HTTP edge: request/response models, routes, and the one place domain errors become HTTP."""
