"""Loading, validating and building app catalogues and their embedding artifacts."""
