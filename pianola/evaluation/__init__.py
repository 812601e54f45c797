"""Evaluation: held-out likelihood (`heldout`), music metrics (`metrics`), musicality against human pieces
(`musicality`), and promotion in the registry (`promotion`)."""
