"""captum_concepts.visualization: public names are re-exported here."""

__all__: list = []
