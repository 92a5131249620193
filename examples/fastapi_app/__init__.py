"""A small FastAPI app on cachelayer (see app.py)."""
