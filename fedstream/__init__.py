"""fedstream entry points: the `fedstream` command and the demo that wires clients, broker and job together."""
