"""fedstream producers."""
