"""The least an HTTP service on our stack can do with a create, for
bench/stack_floor.py: gunicorn (our settings) and Flask echoing the JSON body
(/echo/patients), and the same through flask-smorest with a marshmallow schema
of the create's five fields (/smorest/patients). No database, no calls."""

import marshmallow as ma
from flask import Flask, jsonify, request
from flask_smorest import Api, Blueprint

app = Flask(__name__)
app.config.update(API_TITLE="floor", API_VERSION="1", OPENAPI_VERSION="3.0.3")
api = Api(app)
blp = Blueprint("floor", __name__)


class CreateSchema(ma.Schema):
    name = ma.fields.String(required=True)
    email = ma.fields.Email(required=True)
    address = ma.fields.String(required=True)
    dateOfBirth = ma.fields.Date(required=True)
    registeredDate = ma.fields.Date(required=True)


@app.post("/echo/patients")
def echo():
    return jsonify(request.get_json()), 201


@blp.post("/smorest/patients")
@blp.arguments(CreateSchema)
@blp.response(201, CreateSchema)
def validated(data):
    return data


api.register_blueprint(blp)
