"""Private implementation modules of :mod:`captum_concepts.attr` (public names are re-exported there)."""
