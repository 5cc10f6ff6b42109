"""Private helpers shared by every module (Captum's ``_utils`` pattern); import them from their modules."""
