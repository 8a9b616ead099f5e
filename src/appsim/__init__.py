"""appsim: similar-app search, campaign-performance prediction and v1/v2 A/B testing."""

__version__ = "0.1.0"
