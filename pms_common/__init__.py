"""Code every service shares: config helpers, logging, health, database setup,
the gRPC server frame and the generated proto stubs. Imported, never copied."""
