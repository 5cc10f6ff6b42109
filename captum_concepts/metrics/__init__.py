"""captum_concepts.metrics: public names are re-exported here."""

__all__: list = []
