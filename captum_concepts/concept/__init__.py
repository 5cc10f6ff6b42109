"""captum_concepts.concept: public names are re-exported here."""

__all__: list = []
