"""The JSON shapes of the auth API (camelCase, as the Java original)."""
import marshmallow as ma
from marshmallow import validate

from .models import ROLES
from .passwords import password_weakness

EMAIL = dict(required=True, validate=validate.Length(max=255))
# Generous for passphrases, small enough that nobody hashes megabytes.
PASSWORD_MAX_LENGTH = 1024


class LoginSchema(ma.Schema):
    email = ma.fields.Email(**EMAIL)
    password = ma.fields.String(required=True, load_only=True,
                                validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH))


class TokenSchema(ma.Schema):
    class Meta:
        ordered = True

    token = ma.fields.String(metadata={"description": "The JWT to send as `Authorization: Bearer <token>`"})
    expiresIn = ma.fields.Integer(metadata={"description": "Seconds until the token expires"})
    tokenType = ma.fields.String(metadata={"example": "Bearer"})


class ClaimsSchema(ma.Schema):
    """What the gateway learns about the caller from a valid token."""

    class Meta:
        ordered = True

    sub = ma.fields.String(metadata={"description": "The user's email"})
    role = ma.fields.String(validate=validate.OneOf(ROLES))
    exp = ma.fields.Integer(metadata={"description": "Expiry, seconds since the Unix epoch"})
    jti = ma.fields.String(metadata={"description": "The token's id"})


class UserSchema(ma.Schema):
    """A user as the API returns it (never with a password or its hash)."""

    class Meta:
        ordered = True

    id = ma.fields.UUID(dump_only=True)
    email = ma.fields.Email(**EMAIL, metadata={"description": "Stored lower-cased"})
    role = ma.fields.String(required=True, validate=validate.OneOf(ROLES))
    createdAt = ma.fields.DateTime(dump_only=True, attribute="created_at")
    createdBy = ma.fields.String(dump_only=True, attribute="created_by", allow_none=True,
                                 metadata={"description": "The admin who created the user, if known"})


class UserCreateSchema(UserSchema):
    password = ma.fields.String(
        required=True, load_only=True, validate=validate.Length(max=PASSWORD_MAX_LENGTH),
        metadata={"description": "At least 12 characters, of at least two kinds "
                                 "(lower case, upper case, digits, others), not containing the email"})

    @ma.validates_schema(skip_on_field_errors=False)
    def strong_password(self, data, **_kwargs):
        if "password" in data:
            weakness = password_weakness(data["password"], data.get("email"))
            if weakness:
                raise ma.ValidationError(weakness, "password")
