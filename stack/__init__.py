"""The local stack: every part of the system as a supervised process (`make run`)."""
