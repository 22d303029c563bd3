"""fedstream schemas."""
