"""The JSON shapes of the auth API (camelCase, as the Java original)."""

import marshmallow as ma
from marshmallow import validate

from pms_common.identity import ROLES, email_key

from .passwords import MIN_LENGTH, password_weakness

EMAIL = {"required": True, "validate": validate.Length(max=255)}
# Generous for passphrases, small enough that nobody hashes megabytes.
PASSWORD_MAX_LENGTH = 1024
PASSWORD_RULE = (
    f"At least {MIN_LENGTH} characters and not easy to guess (checked with zxcvbn, "
    f"against common passwords, patterns and the email); a passphrase works well"
)


class StrictBoolean(ma.fields.Boolean):
    """JSON true or false only (marshmallow also takes "yes", 1, "on"...)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class EmailAsKey(ma.Schema):
    """Turns `email` into its comparison key before validation, so look-alikes
    of an address (full-width letters, case) meet the same row."""

    @ma.pre_load
    def email_as_key(self, data, **_kwargs):
        if isinstance(data, dict) and isinstance(data.get("email"), str):
            return {**data, "email": email_key(data["email"])}
        return data


# Examples a reader can recognise (Swagger UI sends them as the default body).
EXAMPLE_EMAIL = "frontdesk@clinic.example"
EXAMPLE_PASSWORD = "copper lantern meadow 42"  # nosec B105


class LoginSchema(EmailAsKey):
    email = ma.fields.Email(**EMAIL, metadata={"example": EXAMPLE_EMAIL})
    password = ma.fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH),
        metadata={"example": EXAMPLE_PASSWORD},
    )


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


class UserSchema(EmailAsKey):
    """A user as the API returns it (never with a password or its hash)."""

    class Meta:
        ordered = True

    id = ma.fields.UUID(dump_only=True)
    email = ma.fields.Email(
        **EMAIL, metadata={"description": "Stored NFKC-normalised and case-folded", "example": EXAMPLE_EMAIL}
    )
    role = ma.fields.String(required=True, validate=validate.OneOf(ROLES), metadata={"example": "USER"})
    disabled = ma.fields.Boolean(
        dump_only=True, metadata={"description": "A disabled user cannot log in and their tokens are refused"}
    )
    createdAt = ma.fields.DateTime(dump_only=True, attribute="created_at")
    createdBy = ma.fields.String(
        dump_only=True,
        attribute="created_by",
        allow_none=True,
        metadata={"description": "The admin who created the user, if known"},
    )


class UserCreateSchema(UserSchema):
    password = ma.fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(max=PASSWORD_MAX_LENGTH),
        metadata={"description": PASSWORD_RULE, "example": EXAMPLE_PASSWORD},
    )

    @ma.validates_schema(skip_on_field_errors=False)
    def strong_password(self, data, **_kwargs):
        if "password" in data:
            weakness = password_weakness(data["password"], data.get("email"))
            if weakness:
                raise ma.ValidationError(weakness, "password")


class UserPatchSchema(ma.Schema):
    role = ma.fields.String(validate=validate.OneOf(ROLES), metadata={"example": "ADMIN"})
    disabled = StrictBoolean(
        metadata={"description": "true: the user can no longer log in, and every token they hold is refused"}
    )


class PasswordChangeSchema(ma.Schema):
    currentPassword = ma.fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH),
        metadata={"example": EXAMPLE_PASSWORD},
    )
    newPassword = ma.fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(max=PASSWORD_MAX_LENGTH),
        metadata={"description": PASSWORD_RULE, "example": "amber quarry whistle 7"},
    )
