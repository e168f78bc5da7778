"""HTTP intake: `leadflow serve`."""
