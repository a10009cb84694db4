"""The registry, dispatch, priority and tracing machinery. Imports no provider."""
