from patient import create_app

app = create_app()
