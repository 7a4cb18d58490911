from auth import create_app

app = create_app()
