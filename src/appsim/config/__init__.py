"""Configuration: YAML defaults (config.yaml) overridden by APPSIM_* environment variables."""
