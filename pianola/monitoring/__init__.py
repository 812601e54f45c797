"""Monitoring: Wasserstein drift of new pieces from the training corpus (`drift`) and of what the service
served (`served`)."""
