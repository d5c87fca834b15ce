"""Generation: a request (validated once), the sampling loop and its masks, saving pieces."""
