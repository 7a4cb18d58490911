"""The WSGI entry gunicorn loads."""
from analytics import create_app

app = create_app()
