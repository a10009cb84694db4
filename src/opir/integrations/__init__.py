"""Integrations with model libraries; each is imported only when used."""
