"""es-interest: personalized Elasticsearch search from dynamic user-interest embeddings."""

__version__ = "0.1.0"
