"""The registry service: the one place that writes to the MLflow Model Registry on request
(promote, rollback) and keeps the registry's view in Redis for the gateway and the workers."""
