"""The dashboard: pages served by the API (see pages.py) and their static files."""
