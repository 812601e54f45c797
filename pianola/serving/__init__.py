"""The deployed model: requests for pieces (composer), continuous batching (engine), what is kept (store), the
HTTP service and its page (app). See docs/serving.md."""
