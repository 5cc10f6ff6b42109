"""Private implementations; public names are re-exported by ``captum_concepts.metrics``."""
