"""Private implementation modules of captum_concepts.concept."""
