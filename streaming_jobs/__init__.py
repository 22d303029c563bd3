"""fedstream streaming_jobs."""
