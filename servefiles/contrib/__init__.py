"""Integrations with web frameworks (Django)."""
