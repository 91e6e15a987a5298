"""Django's PostgreSQL backend, lending pooled connections through a check of ours (base.py)."""
