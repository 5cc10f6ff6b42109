"""captum_concepts.attr: public names are re-exported here."""

__all__: list = []
