"""Generation: sampling (`sampling`), pieces from a bundle (`generate`), WAV rendering (`render`)."""
